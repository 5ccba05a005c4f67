"""batch_results: a batch's output and error lines matched back to the inputs by custom id,
whatever their order, with missing, duplicate, unknown and error lines; and a line's reply
read as the synchronous path reads one (local salvage, no repair call)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncOpenAI

from consumer.errors import (
    InvalidReply,
    PersistentFailure,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
)
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.ledger import Tokens
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.request_params import choose, server_kind
from consumer.pipeline.admit import Admitted
from consumer.tools.batch_requests import custom_id
from consumer.tools.batch_results import answer_of, match, read_lines
from schemas import ModerationRequest, Source, UsageOutcome

POLICY = load_policy()


def reply(content: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 90, "completion_tokens": 12},
    }


def good() -> str:
    scores = {c.field: 0.0 for c in POLICY.categories}
    return json.dumps({"scores": scores, "rationale": "fine"})


def ok_line(cid: str, content: str | None = None) -> dict[str, Any]:
    body = reply(content or good())
    return {
        "id": "r",
        "custom_id": cid,
        "response": {"status_code": 200, "body": body},
        "error": None,
    }


def error_line(cid: str, status: int) -> dict[str, Any]:
    body = {"error": {"message": "no", "type": "server_error"}}
    return {
        "id": "r",
        "custom_id": cid,
        "response": {"status_code": status, "body": body},
        "error": None,
    }


@given(
    st.sets(st.tuples(st.integers(0, 5), st.integers(0, 500)), max_size=40),
    st.data(),
)
def test_every_input_gets_exactly_one_answer_whatever_the_lines(
    inputs: set[tuple[int, int]], data: st.DataObject
) -> None:
    asked = [custom_id(p, o) for p, o in sorted(inputs)]
    answered = data.draw(st.lists(st.sampled_from(asked), unique=True)) if asked else []
    failed = set(data.draw(st.lists(st.sampled_from(answered), unique=True))) if answered else set()
    lines = [error_line(c, 500) if c in failed else ok_line(c) for c in answered]
    repeats = data.draw(st.lists(st.sampled_from(lines), max_size=5)) if lines else []
    strangers = [ok_line(custom_id(9, 10_000 + i)) for i in range(data.draw(st.integers(0, 3)))]
    every = [*lines, *repeats, *strangers, {}]
    random.Random(data.draw(st.integers())).shuffle(every)

    matched = match(asked, every)
    assert len(matched.answers) == len(asked) and set(matched.answers) == set(asked), (
        "every input exactly once, and no other"
    )
    assert sorted(matched.missing) == sorted(set(asked) - set(answered))
    assert matched.duplicates == len(repeats)
    assert matched.unknown == len(strangers) + 1
    for cid, answer in matched.answers.items():
        if cid in failed or cid in matched.missing:
            assert answer.completion is None and isinstance(answer.error, ProviderUnavailable)
        else:
            assert answer.error is None and answer.completion is not None


def test_a_line_is_matched_by_its_custom_id_never_its_place() -> None:
    asked = [custom_id(0, 0), custom_id(0, 1)]
    lines = [ok_line(asked[1], "second"), ok_line(asked[0], "first")]
    matched = match(asked, lines)
    first, second = (matched.answers[c].completion for c in asked)
    assert first is not None and first.choices[0].message.content == "first"
    assert second is not None and second.choices[0].message.content == "second"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RequestRejected),
        (404, RequestRejected),
        (429, RateLimited),
        (500, ProviderUnavailable),
    ],
)
def test_an_error_line_is_that_inputs_error(status: int, error: type[Exception]) -> None:
    answer = answer_of(error_line("p0-o0", status))
    assert answer.completion is None and type(answer.error) is error


def test_a_line_the_batch_never_ran_and_an_unreadable_file_line() -> None:
    expired = {
        "custom_id": "p0-o0",
        "response": None,
        "error": {"code": "batch_expired", "message": "late"},
    }
    answer = answer_of(expired)
    assert isinstance(answer.error, ProviderUnavailable) and "batch_expired" in str(answer.error)
    assert read_lines('{"custom_id": "p0-o0"}\nnot json\n\n[1]\n') == [
        {"custom_id": "p0-o0"},
        {},
        {},
    ]
    not_a_completion = ok_line("p0-o0")
    not_a_completion["response"]["body"] = {"choices": "none"}
    assert isinstance(answer_of(not_a_completion).error, ProviderUnavailable)


def classifier() -> Classifier:
    client = AsyncOpenAI(base_url="http://test/v1", api_key="k", max_retries=0)
    return Classifier(
        client,
        model="gpt-4o-mini",
        params=choose("gpt-4o-mini", server_kind(client.base_url), max_tokens=300, temperature=0.0),
        builder=PromptBuilder(POLICY, load_prompt()),
        limiter=Limiter(4),
        prices=PriceTable().batch_api(),
    )


def read(content: str | None, *, finish: str = "stop", status: int = 200) -> Any:
    chosen = classifier()
    admitted = Admitted(
        request=ModerationRequest(id="c", text="hello"),
        text="hello",
        context=None,
        truncated=False,
        content_tokens=2,
    )
    call = chosen.new_call(admitted, Source(topic="in", partition=0, offset=3))
    line = error_line("p0-o3", status) if status != 200 else ok_line("p0-o3", content)
    if status == 200:
        line["response"]["body"] = reply(content or good(), finish)
    answer = answer_of(line)
    return chosen.read_reply(call, answer.completion, Tokens(90, 12), answer.error)


def test_a_reply_is_read_by_the_ladder_salvage_included_and_priced_at_the_batch_price() -> None:
    plain = read(good())
    assert plain.verdict is not None and [u.outcome for u in plain.usage] == [UsageOutcome.OK]
    fenced = read(f"```json\n{good()}\n```")
    assert fenced.verdict is not None
    assert [u.outcome for u in fenced.usage] == [UsageOutcome.SALVAGED]
    full = PriceTable().cost("gpt-4o-mini", 90, 12)
    assert full is not None and plain.usage[0].cost_usd == pytest.approx(full / 2)
    assert "Batch API" in (plain.usage[0].price_source or "")


def test_an_unusable_reply_or_an_error_line_is_the_inputs_failure_with_no_call() -> None:
    invalid = read('{"scores": {}, "rationale": 3}')
    assert invalid.verdict is None and isinstance(invalid.failure, InvalidReply)
    assert [u.outcome for u in invalid.usage] == [UsageOutcome.INVALID_REPLY]
    cut = read(good()[:20], finish="length")
    assert cut.verdict is None and isinstance(cut.failure, InvalidReply)
    assert [u.outcome for u in cut.usage] == [UsageOutcome.LENGTH]
    rejected = read(None, status=400)
    assert isinstance(rejected.failure, RequestRejected)
    assert [u.outcome for u in rejected.usage] == [UsageOutcome.REJECTED]
    assert rejected.usage[0].prompt_tokens == 0
    failed = read(None, status=503)
    assert isinstance(failed.failure, PersistentFailure) and "not retried" in str(failed.failure)
    assert [u.outcome for u in failed.usage] == [UsageOutcome.PROVIDER_UNAVAILABLE]
