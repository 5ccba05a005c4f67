"""batch_requests: custom ids round-trip, a batch line's body is the synchronous request's, and
the batch's key is stable for the same file and different for another; and the batch price."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncOpenAI

from consumer.model.chat_client import Completion, Statics
from consumer.model.classify import Classifier
from consumer.model.cost import BATCH_API_DISCOUNT, PriceFile, PriceTable
from consumer.model.limit import Limiter
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.model.request_params import choose, server_kind
from consumer.model.tokens import count_tokens
from consumer.pipeline.admit import Admitted
from consumer.tools.batch_requests import (
    KEY_FIELD,
    batch_key,
    batch_metadata,
    custom_id,
    jsonl,
    parse_custom_id,
    request_line,
)
from schemas import ModerationRequest, Source

POLICY = load_policy()
BUILDER = PromptBuilder(POLICY, load_prompt())


@given(st.integers(0, 10_000), st.integers(0, 2**63 - 1))
def test_a_custom_id_round_trips(partition: int, offset: int) -> None:
    assert parse_custom_id(custom_id(partition, offset)) == (partition, offset)


@given(st.text(max_size=30))
def test_text_that_is_not_a_custom_id_is_refused(text: str) -> None:
    try:
        partition, offset = parse_custom_id(text)
    except ValueError:
        return
    assert custom_id(partition, offset) == text, "only our own ids parse, and exactly"


@pytest.mark.parametrize("text", ["", "p1-o", "p01-o2", "p1-o2 ", "P1-O2", "p-1-o2", "1:2"])
def test_near_misses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_custom_id(text)


class Capture:
    """A chat sender that keeps what it would post and answers one valid reply."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def create(
        self, messages: list[dict[str, str]], statics: Statics
    ) -> tuple[Completion, Mapping[str, str]]:
        self.sent.append(statics.body(messages))
        scores = {c.field: 0.0 for c in POLICY.categories}
        content = json.dumps({"scores": scores, "rationale": "fine"})
        completion = Completion.model_validate(
            {
                "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            }
        )
        return completion, {}

    async def aclose(self) -> None:
        return None


def classifier(model: str, sender: Capture, base_url: str = "http://test/v1") -> Classifier:
    client = AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    return Classifier(
        client,
        model=model,
        params=choose(model, server_kind(client.base_url), max_tokens=300, temperature=0.0),
        builder=BUILDER,
        limiter=Limiter(4),
        prices=PriceTable(),
        sender=sender,
    )


def admitted(text: str, context: str | None, model: str) -> Admitted:
    return Admitted(
        request=ModerationRequest(id="c1", text=text, context=context),
        text=text,
        context=context,
        truncated=False,
        content_tokens=count_tokens(text, model),
    )


@pytest.mark.parametrize(
    ("model", "base_url"),
    [
        ("gpt-4o-mini", "http://test/v1"),  # temperature, json_schema
        ("gpt-5-mini", "https://api.openai.com/v1"),  # max_completion_tokens, reasoning_effort
    ],
)
@pytest.mark.parametrize("context", [None, "a reply to a thread"])
async def test_a_batch_lines_body_is_what_the_synchronous_call_posts(
    model: str, base_url: str, context: str | None
) -> None:
    sender = Capture()
    chosen = classifier(model, sender, base_url)
    source = Source(topic="in", partition=2, offset=7)
    text = "is this fine? ```json {} ```"
    body = chosen.request_body(chosen.new_call(admitted(text, context, model), source))
    result = await chosen.classify(admitted(text, context, model), source)
    assert result.verdict is not None
    posted = json.loads(sender.sent[0])
    line = json.loads(jsonl([request_line(custom_id(2, 7), body)]))
    assert line == {
        "custom_id": "p2-o7",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": posted,
    }
    assert posted["model"] == model and "response_format" in posted
    assert posted.get("max_completion_tokens", posted.get("max_tokens")) == 300 or model.startswith(
        "gpt-5"
    )
    assert ("reasoning_effort" in posted) == model.startswith("gpt-5")


def test_the_key_is_stable_for_one_file_and_differs_for_another() -> None:
    lines = [request_line(custom_id(0, i), {"model": "m", "messages": []}) for i in range(3)]
    content = jsonl(lines)
    assert content.count(b"\n") == 3
    assert batch_key("t", content) == batch_key("t", jsonl(lines))
    assert batch_key("t", content) != batch_key("u", content)
    assert batch_key("t", content) != batch_key("t", jsonl(lines[:2]))
    metadata = batch_metadata(batch_key("t", content), topic="t", range="0:0-3" * 200)
    assert metadata[KEY_FIELD] == batch_key("t", content)
    assert all(len(v) <= 512 for v in metadata.values())


@given(
    st.integers(0, 200_000),
    st.integers(0, 200_000),
    st.integers(0, 200_000),
    st.sampled_from(["gpt-4o-mini", "gpt-4o", "gpt-5-mini", "gpt-4.1-nano"]),
)
def test_the_batch_price_is_half_the_synchronous_one(
    prompt: int, completion: int, cached: int, model: str
) -> None:
    listed, batch = PriceTable(), PriceTable().batch_api()
    assert BATCH_API_DISCOUNT == 0.5
    full = listed.cost(model, prompt, completion, min(cached, prompt))
    half = batch.cost(model, prompt, completion, min(cached, prompt))
    assert full is not None and half is not None
    assert half == pytest.approx(full * 0.5, rel=1e-12, abs=1e-18)


def test_the_batch_price_names_its_discount_and_applies_to_a_prices_file() -> None:
    prices: Any = {"version": "v1", "models": {"mine": {"input": 2.0, "output": 4.0}}}
    table = PriceTable(overrides=PriceFile.model_validate(prices))
    batch = table.batch_api()
    assert batch.cost("mine", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert table.cost("mine", 1_000_000, 1_000_000) == pytest.approx(6.0)
    assert "Batch API" in batch.source_for("mine") and "prices file v1" in batch.source_for("mine")
    assert "Batch API" in batch.source_for("gpt-4o-mini")
    assert "Batch API" not in table.source_for("gpt-4o-mini")
    assert batch.cost("no-such-model", 10, 10) is None, "unknown stays unknown, not free"
