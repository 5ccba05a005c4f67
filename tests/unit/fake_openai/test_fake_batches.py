"""The Batch API's pure parts: input validation, the status clock, the result files."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from consumer.testing.fake_openai.app import Endpoints
from consumer.testing.fake_openai.batch_input import parse
from consumer.testing.fake_openai.batch_output import Result, result_lines, shuffled, usage
from consumer.testing.fake_openai.batches import BatchStore, phase
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.files import FileStore
from consumer.testing.fake_openai.state import FakeState

CHAT = "/v1/chat/completions"
ORDER = ["validating", "in_progress", "completed"]


def line(custom_id: Any, **overrides: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **overrides}


def jsonl(items: list[Any]) -> bytes:
    return b"\n".join(i if isinstance(i, bytes) else json.dumps(i).encode() for i in items)


def codes(content: bytes) -> list[tuple[int | None, str]]:
    return [(e["line"], e["code"]) for e in parse(content, CHAT).errors]


def test_a_valid_file_parses_to_its_requests() -> None:
    parsed = parse(jsonl([line("a"), b"", b"  ", line("b")]) + b"\n", CHAT)
    assert parsed.errors == []
    assert [r.custom_id for r in parsed.lines] == ["a", "b"]
    assert parsed.model == "gpt-4o-mini"


def test_each_bad_line_is_named_by_its_number() -> None:
    content = jsonl(
        [
            b"\xff\xfe not utf-8",
            b"[1, 2]",
            line(""),
            line(7),
            {k: v for k, v in line("c").items() if k != "url"},
            line("d", method="PUT"),
            line("e", url="/v1/embeddings"),
            line("f", body="text"),
            line("g"),
            line("g"),
        ]
    )
    assert codes(content) == [
        (1, "invalid_json_line"),
        (2, "invalid_json_line"),
        (3, "missing_required_parameter"),
        (4, "missing_required_parameter"),
        (5, "missing_required_parameter"),
        (6, "invalid_value"),
        (7, "mismatched_endpoint"),
        (8, "missing_required_parameter"),
        (10, "duplicate_custom_id"),
    ]


def test_a_file_without_requests_is_empty() -> None:
    assert codes(b"") == [(None, "empty_file")]
    assert codes(b"\n\n") == [(None, "empty_file")]


def test_one_model_per_batch() -> None:
    other = line("b")
    other["body"] = {**other["body"], "model": "gpt-4o"}
    assert codes(jsonl([line("a"), other])) == [(None, "mismatched_model")]


@given(st.lists(st.sampled_from("abcdef"), max_size=20))
def test_every_custom_id_is_kept_once_and_every_repeat_is_an_error(ids: list[str]) -> None:
    parsed = parse(jsonl([line(i) for i in ids]), CHAT)
    assert [r.custom_id for r in parsed.lines] == list(dict.fromkeys(ids))
    repeats = [n for n, i in enumerate(ids, start=1) if i in ids[: n - 1]]
    assert [e["line"] for e in parsed.errors if e["code"] == "duplicate_custom_id"] == repeats


@given(st.floats(0, 100), st.floats(0, 100), st.floats(0, 100), st.booleans())
def test_phase_only_moves_forward_with_time(a: float, b: float, delay: float, valid: bool) -> None:
    early, late = sorted((a, b))
    first, second = phase(early, delay, valid=valid), phase(late, delay, valid=valid)
    if valid:
        assert ORDER.index(first) <= ORDER.index(second)
    else:
        assert second in ("validating", "failed") and (first, second) != ("failed", "validating")


def test_phase_halves_the_delay() -> None:
    assert [phase(t, 10, valid=True) for t in (0, 4.9, 5, 9.9, 10)] == [
        "validating",
        "validating",
        "in_progress",
        "in_progress",
        "completed",
    ]
    assert phase(5, 10, valid=False) == "failed"
    assert phase(0, 0, valid=True) == "completed"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def answer(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def store_with(content: bytes) -> tuple[BatchStore, Clock, str]:
    clock = Clock()
    store = BatchStore(FileStore(), clock)
    batch = store.create(
        parse(content, CHAT),
        input_file_id="file-x",
        endpoint=CHAT,
        completion_window="24h",
        metadata=None,
        seed=1,
        answer=answer,
    )
    return store, clock, batch.id


def test_a_batch_is_revealed_by_the_clock() -> None:
    store, clock, batch_id = store_with(jsonl([line("a"), line("b")]))
    seen = []
    batch = store.batches[batch_id]
    for step in (0.0, 4.0, 2.0, 5.0):
        clock.now += step
        assert store.get(batch_id, 10.0) is batch
        seen.append((batch.status, batch.counts))
    assert seen == [
        ("validating", (0, 0, 0)),
        ("validating", (0, 0, 0)),
        ("in_progress", (2, 0, 0)),
        ("completed", (2, 2, 0)),
    ]
    assert batch.document()["usage"]["total_tokens"] == 10
    assert batch.output_file_id is not None and batch.error_file_id is None
    assert batch.stamps.keys() == {"in_progress", "finalizing", "completed"}


def test_a_longer_delay_never_moves_a_batch_back() -> None:
    store, clock, batch_id = store_with(jsonl([line("a")]))
    clock.now += 1
    assert store.get(batch_id, 0.0) is not None
    batch = store.get(batch_id, 1000.0)
    assert batch is not None and batch.status == "completed"


def test_an_invalid_batch_fails_after_validation() -> None:
    store, clock, batch_id = store_with(b"{bad")
    assert store.batches[batch_id].results == []  # nothing answered
    batch = store.get(batch_id, 10.0)
    assert batch is not None and batch.status == "validating"
    clock.now += 5
    assert batch is store.get(batch_id, 10.0)
    assert batch.status == "failed"
    assert batch.document()["errors"]["data"][0]["code"] == "invalid_json_line"
    assert not store.cancel(batch, 10.0)


def test_cancel_then_cancelled_after_half_the_delay() -> None:
    store, clock, batch_id = store_with(jsonl([line("a"), line("b")]))
    batch = store.batches[batch_id]
    assert store.cancel(batch, 10.0)
    assert batch.status == "cancelling"
    clock.now += 20  # past completion: the cancel came first
    store.advance(batch, 10.0)
    assert batch.status == "cancelled" and batch.counts == (2, 0, 2)
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert not store.cancel(batch, 10.0)


def test_page_is_newest_first_after_the_cursor() -> None:
    store, _, first = store_with(jsonl([line("a")]))
    later = [
        store.create(
            parse(jsonl([line("a")]), CHAT),
            input_file_id="f",
            endpoint=CHAT,
            completion_window="24h",
            metadata=None,
            seed=None,
            answer=answer,
        ).id
        for _ in range(2)
    ]
    chosen, more = store.page(None, 2, 0.0)
    assert [b.id for b in chosen] == later[::-1] and more
    chosen, more = store.page(later[0], 2, 0.0)
    assert [b.id for b in chosen] == [first] and not more


statuses = st.sampled_from([200, 200, 400, 404, 429, 500, 503])


@given(st.lists(statuses, max_size=30), st.integers())
def test_every_request_is_in_exactly_one_result_file(codes: list[int], seed: int) -> None:
    results = [Result(f"id-{i}", code, {}) for i, code in enumerate(codes)]
    output, errors = result_lines(results, random.Random(seed))
    found = [line["custom_id"] for line in output + errors]
    assert sorted(found) == sorted(r.custom_id for r in results)
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["response"]["status_code"] != 200 for line in errors)
    assert len({line["id"] for line in output + errors}) == len(results)


@given(st.lists(st.integers(), min_size=2, max_size=10, unique=True), st.integers())
def test_shuffled_never_keeps_the_order(values: list[int], seed: int) -> None:
    lines = [{"v": v} for v in values]
    order = shuffled(lines, random.Random(seed))
    assert order != lines
    assert sorted(order, key=lambda d: d["v"]) == sorted(lines, key=lambda d: d["v"])


def test_usage_sums_answered_chat_completions_only() -> None:
    body = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        }
    }
    results = [Result("a", 200, body), Result("b", 500, body), Result("c", 200, {"results": []})]
    assert usage(results) == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 14,
    }


def test_answer_uses_the_request_checks() -> None:
    endpoints = Endpoints(FakeState(FakeConfig(fail_when_contains="POISON")))
    status, body = endpoints.answer(CHAT, line("a")["body"])
    assert status == 200 and body["object"] == "chat.completion"
    poisoned = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "POISON"}]}
    status, body = endpoints.answer(CHAT, poisoned)
    assert status == 500 and body["error"]["type"] == "server_error"
    status, body = endpoints.answer(CHAT, {"model": "no-such-model", "messages": [{}]})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = endpoints.answer("/v1/moderations", {"input": 3})
    assert status == 400
    status, body = endpoints.answer("/v1/moderations", {"input": "hello"})
    assert status == 200 and len(body["results"]) == 1
