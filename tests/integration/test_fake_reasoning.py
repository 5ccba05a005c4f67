"""The fake plays a reasoning model (over real HTTP, in process): OpenAI's 400s for
``max_tokens`` and a non-default ``temperature``, reasoning tokens inside
``max_completion_tokens``; and the knob that makes it reject ``json_schema``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from consumer.model.policy import load_policy
from consumer.testing.fake_openai import FakeConfig, running_fake

pytestmark = pytest.mark.timeout(60)

FORMAT: Any = load_policy().response_format
SYSTEM = "You are a content-moderation classifier. Reply only with JSON."
MESSAGES: Any = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Judge it.\n<content>\nhave a nice day\n</content>"},
]


@pytest_asyncio.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[AsyncOpenAI]:
    knobs = getattr(request, "param", {})
    async with running_fake(FakeConfig(seed=5, **knobs)) as url:
        sdk = AsyncOpenAI(base_url=url, api_key="test", max_retries=0, timeout=10)
        yield sdk
        await sdk.close()


@pytest.mark.parametrize("model", ["gpt-5-mini", "o4-mini", "gpt-5.1"])
async def test_max_tokens_is_rejected_as_openai_does(client: AsyncOpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=400)
    error = caught.value
    assert error.code == "unsupported_parameter"
    assert error.param == "max_tokens"
    assert error.body == {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }


async def test_a_non_default_temperature_is_rejected(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=2000, temperature=0.0
        )
    assert caught.value.code == "unsupported_value"
    assert caught.value.param == "temperature"
    # the default is accepted
    await client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=2000, temperature=1
    )


async def test_an_effort_the_model_does_not_take(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-5.1", messages=MESSAGES, reasoning_effort="minimal"
        )
    assert caught.value.code == "unsupported_value"
    assert "Supported values are: 'none', 'low', 'medium', and 'high'." in caught.value.message


async def test_reasoning_tokens_are_spent_and_reported(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-5-mini",
        messages=MESSAGES,
        max_completion_tokens=1424,
        reasoning_effort="minimal",
        response_format=FORMAT,
    )
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert reasoning > 0
    assert usage.completion_tokens > reasoning  # the reply's tokens come on top
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content


async def test_too_small_a_budget_ends_in_length_with_empty_content(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=100, reasoning_effort="low"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == ""
    assert completion.usage is not None and completion.usage.completion_tokens == 100
    details = completion.usage.completion_tokens_details
    assert details is not None and details.reasoning_tokens == 100


async def test_other_models_keep_the_old_rules(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=400, temperature=0.0
    )
    details = completion.usage.completion_tokens_details if completion.usage else None
    assert details is not None and details.reasoning_tokens == 0


@pytest.mark.parametrize("client", [{"reasoning_rules": False}], indirect=True)
async def test_reasoning_rules_can_be_turned_off(client: AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, max_tokens=400)


@pytest.mark.parametrize("client", [{"reject_json_schema": True}], indirect=True)
async def test_reject_json_schema(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, response_format=FORMAT
        )
    assert caught.value.param == "response_format"
    assert "'json_schema' is not supported" in caught.value.message
    obj = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert obj.choices[0].message.content


async def test_a_schema_in_the_prompt_is_followed_without_response_format(
    client: AsyncOpenAI,
) -> None:
    import json  # noqa: PLC0415

    from consumer.model.reply_format import ReplyFormat, ReplyMode  # noqa: PLC0415

    reply_format = ReplyFormat.of(FORMAT)
    for mode in (ReplyMode.JSON_OBJECT, ReplyMode.TEXT):
        messages: Any  # plain dicts, as MESSAGES: the SDK's create() takes its own TypedDicts
        messages, response_format = reply_format.shaped(MESSAGES, mode)
        extra: dict[str, Any] = (
            {} if response_format is None else {"response_format": response_format}
        )
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            **extra,
        )
        reply = load_policy().reply_model.model_validate_json(
            completion.choices[0].message.content or ""
        )
        assert json.loads(reply.model_dump_json(by_alias=True))["scores"]
