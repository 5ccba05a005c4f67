"""The fake OpenAI server over real HTTP, driven by the official openai SDK.

One in-process fake serves the module (the ``fake_url``, ``admin`` and ``client`` fixtures of
``conftest.py``); each test resets it and sets its own knobs through ``PATCH /_fake/config``
(the way tests start and end an outage). The last tests run the real
``modstream fake-openai`` command through ``tests/fake_server.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ConfigDict, ValidationError

from consumer.model.tokens import count_tokens
from consumer.testing.fake_openai import FakeAdmin
from consumer.testing.fake_openai.reply import malformed
from tests.fake_server import fake_openai_server, free_port, health_answers, wait_until_ready

MODEL = "gpt-4o-mini"
SYSTEM = "You are a content-moderation classifier. Reply with JSON only."


class Scores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    harassment: float
    harassment_threatening: float
    hate: float
    self_harm_intent: float
    sexual_minors: float
    violence: float
    violence_graphic: float


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scores: Scores
    rationale: str


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int
    scores: Scores
    rationale: str


class BatchReply(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Item]


REPLY_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "reply", "strict": True, "schema": to_strict_json_schema(Reply)},
}


def messages(content: str, system: str = SYSTEM) -> list[Any]:
    user = f"Judge the content in the block below.\n<content>\n{content}\n</content>"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


async def test_parse_returns_a_parsed_verdict_with_real_usage(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=messages("I will stab you, idiot"), response_format=Reply
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.refusal is None
    reply = choice.message.parsed
    assert reply is not None
    assert reply.scores.violence >= 0.9
    assert reply.scores.harassment >= 0.9
    assert reply.scores.sexual_minors <= 0.05
    assert reply.rationale == "matched keywords: stab, idiot"
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == count_tokens(choice.message.content or "", MODEL)
    texts = [m["content"] for m in messages("I will stab you, idiot")]
    expected_prompt = sum(4 + count_tokens(t, MODEL) for t in texts) + 3  # 3 + role + content
    assert usage.prompt_tokens == expected_prompt
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")


async def test_replies_are_deterministic_per_content(client: AsyncOpenAI) -> None:
    async def ask() -> str | None:
        completion = await client.chat.completions.create(
            model=MODEL, messages=messages("you loser"), response_format=REPLY_FORMAT
        )
        return completion.choices[0].message.content

    assert await ask() == await ask()


async def test_batch_schema_gets_one_item_per_numbered_block(client: AsyncOpenAI) -> None:
    user = (
        "Judge each block.\n"
        '<content index="0">have a nice day</content>\n'
        '<content index="1">go murder them</content>'
    )
    completion = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": user}], response_format=BatchReply
    )
    batch = completion.choices[0].message.parsed
    assert batch is not None
    assert [item.index for item in batch.items] == [0, 1]
    assert batch.items[0].scores.violence <= 0.05
    assert batch.items[1].scores.violence >= 0.9


async def test_json_object_and_plain_text_replies(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=messages("buy meth here"), response_format={"type": "json_object"}
    )
    data = json.loads(completion.choices[0].message.content or "")
    assert data["scores"]["illicit"] >= 0.9
    assert data["rationale"] == "matched keywords: meth"
    plain = await client.chat.completions.create(model=MODEL, messages=messages("hello"))
    assert plain.choices[0].message.content == "Not flagged: no policy keywords found."


async def test_moderations_flag_violent_text_only(client: AsyncOpenAI) -> None:
    result = await client.moderations.create(input="I am going to shoot him")
    assert result.results[0].flagged
    assert result.results[0].categories.violence
    assert result.results[0].category_scores.violence >= 0.9
    both = await client.moderations.create(input=["What a lovely garden", "kill myself"])
    assert [r.flagged for r in both.results] == [False, True]
    assert both.results[1].categories.self_harm_intent
    assert max(both.results[0].category_scores.model_dump().values()) <= 0.05
    raw = both.results[1].model_dump(by_alias=True)
    assert "self-harm/intent" in raw["categories"]
    assert raw["category_applied_input_types"]["violence/graphic"] == ["text"]


async def test_injected_429_carries_retry_after(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_429=1.0, retry_after_mode="both", retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages("hi"))
    headers = caught.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["retry-after-ms"] == "2000"
    assert "x-ratelimit-remaining-requests" in headers
    assert caught.value.code == "rate_limit_exceeded"


async def test_mixed_retry_after_alternates_headers(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_429=1.0, retry_after_mode="mixed", retry_after_s=0.5)
    seen = []
    for _ in range(4):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=messages("hi"))
        headers = caught.value.response.headers
        seen.append((headers.get("retry-after"), headers.get("retry-after-ms")))
    assert seen == [("0.5", None), (None, "500")] * 2


async def test_wrong_api_key_is_401_in_openai_shape(fake_url: str, admin: FakeAdmin) -> None:
    await admin.patch(api_key="sk-right")
    wrong = AsyncOpenAI(base_url=fake_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await wrong.chat.completions.create(model=MODEL, messages=messages("hi"))
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    right = AsyncOpenAI(base_url=fake_url, api_key="sk-right", max_retries=0)
    assert (await right.moderations.create(input="hi")).results
    await wrong.close()
    await right.close()


async def test_refusal_sets_message_refusal(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_refusal=1.0)
    completion = await client.chat.completions.parse(
        model=MODEL, messages=messages("hi"), response_format=Reply
    )
    message = completion.choices[0].message
    assert message.refusal == "I'm sorry, I can't help with that."
    assert message.content is None
    assert message.parsed is None


async def test_truncated_reply_raises_length_error(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_truncated=1.0)
    with pytest.raises(openai.LengthFinishReasonError) as caught:
        await client.chat.completions.parse(
            model=MODEL, messages=messages("hi"), response_format=Reply
        )
    content = caught.value.completion.choices[0].message.content or ""
    assert content.startswith('{"scores":')
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)


async def test_max_tokens_cuts_a_long_reply(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=messages("hi"), response_format=REPLY_FORMAT, max_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


async def test_malformed_replies_do_not_validate(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_malformed=1.0)
    kinds = set()
    for _ in range(2):  # alternates invalid JSON and JSON that violates the schema
        completion = await client.chat.completions.create(
            model=MODEL, messages=messages("hi"), response_format=REPLY_FORMAT
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        with pytest.raises(ValidationError) as caught:
            Reply.model_validate_json(choice.message.content or "")
        kinds.add(caught.value.errors()[0]["type"])
    assert "json_invalid" in kinds
    assert len(kinds) == 2


@pytest.mark.parametrize(
    "kind",
    [
        "invalid_json",
        "schema_violation",
        "fenced",
        "trailing_prose",
        "unknown_keys",
        "out_of_range",
    ],
)
async def test_each_malformed_kind_has_a_knob_of_its_own(
    client: AsyncOpenAI, admin: FakeAdmin, kind: str
) -> None:
    good = await client.chat.completions.create(
        model=MODEL, messages=messages("I will stab you"), response_format=REPLY_FORMAT
    )
    value = json.loads(good.choices[0].message.content or "")
    await admin.patch(**{f"p_{kind}": 1.0})
    completion = await client.chat.completions.create(
        model=MODEL, messages=messages("I will stab you"), response_format=REPLY_FORMAT
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    text = choice.message.content or ""
    if kind == "out_of_range":  # valid for this unbounded model, but a score is not in [0, 1]
        scores = Reply.model_validate_json(text).scores.model_dump().values()
        assert not all(0.0 <= score <= 1.0 for score in scores)
    else:
        with pytest.raises(ValidationError):
            Reply.model_validate_json(text)
    # What the server sent is the kind the knob names, made from the good reply.
    assert text == malformed(value, kind)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_tokens(text, MODEL)
    assert (await admin.stats())["by_outcome"] == {"ok": 1, kind: 1}


async def test_content_filter_stops_the_reply(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_content_filter=1.0)
    with pytest.raises(openai.ContentFilterFinishReasonError):
        await client.chat.completions.parse(
            model=MODEL, messages=messages("hi"), response_format=Reply
        )


async def test_hang_times_the_client_out(fake_url: str, admin: FakeAdmin) -> None:
    await admin.patch(p_hang=1.0)
    impatient = AsyncOpenAI(base_url=fake_url, api_key="t", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await impatient.chat.completions.create(model=MODEL, messages=messages("hi"))
    await impatient.close()
    assert (await admin.stats())["by_outcome"] == {"hang": 1}


async def test_drop_closes_the_connection(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_drop=1.0)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=messages("hi"))
    with pytest.raises(openai.APIConnectionError):
        await client.moderations.create(input="hi")
    assert (await admin.stats())["by_outcome"] == {"drop": 2}


async def test_tpm_limit_answers_429_with_ratelimit_headers(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    await admin.patch(tpm=1000)
    first = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("hi"), max_tokens=600
    )
    completion = first.parse()
    assert completion.usage is not None
    charged = completion.usage.prompt_tokens + completion.usage.completion_tokens
    remaining = int(first.headers["x-ratelimit-remaining-tokens"])
    # Charged prompt + 600 at admission, the unused allowance refunded: about `charged` left
    # gone (a little refill can come back in between).
    assert 1000 - charged <= remaining < 1000 - charged + 20
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-limit-requests"] == "30000"
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages("hi"), max_tokens=990)
    headers = caught.value.response.headers
    assert float(headers["retry-after"]) > 0
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 990
    assert headers["x-ratelimit-reset-tokens"].endswith("s")
    assert (await admin.stats())["by_outcome"] == {"ok": 1, "429": 1}


async def test_rpm_limit(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(rpm=2)
    for _ in range(2):
        await client.moderations.create(input="not limited")  # only chat is metered
        await client.chat.completions.create(model=MODEL, messages=messages("hi"))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages("hi"))
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_repeated_long_system_prompt_reports_cached_tokens(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    long_system = "Policy clause: never quote harmful details. " * 200  # ~1600 tokens
    system_tokens = 3 + count_tokens(long_system, MODEL) + count_tokens("system", MODEL)
    cached = []
    for content in ("first", "second"):
        completion = await client.chat.completions.create(
            model=MODEL, messages=messages(content, system=long_system)
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens_details is not None
        cached.append(completion.usage.prompt_tokens_details.cached_tokens)
    assert cached == [0, system_tokens // 128 * 128]
    assert (await admin.stats())["tokens"]["cached"] == cached[1]
    await admin.patch(cache_min_tokens=100_000)
    completion = await client.chat.completions.create(
        model=MODEL, messages=messages("third", system=long_system)
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


async def test_stats_count_requests_outcomes_and_tokens(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    usage_sum = [0, 0]
    for text in ("a", "b", "c"):
        completion = await client.chat.completions.create(model=MODEL, messages=messages(text))
        assert completion.usage is not None
        usage_sum[0] += completion.usage.prompt_tokens
        usage_sum[1] += completion.usage.completion_tokens
    await client.moderations.create(input="x")
    await admin.patch(p_500=1.0)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=messages("d"))
    stats = await admin.stats()
    assert stats["total"] == 5
    assert stats["by_path"] == {"/v1/chat/completions": 4, "/v1/moderations": 1}
    assert stats["by_outcome"] == {"ok": 4, "500": 1}
    assert stats["tokens"]["prompt"] == usage_sum[0]
    assert stats["tokens"]["completion"] == usage_sum[1]
    await admin.reset()
    assert (await admin.stats())["total"] == 0


async def test_request_log_keeps_bodies_without_credentials(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    for text in ("one", "two", "three"):
        await client.chat.completions.create(model=MODEL, messages=messages(text))
    logged = await admin.requests(limit=2)
    assert [r["body"]["messages"][1]["content"].split()[-2] for r in logged] == ["two", "three"]
    assert logged[0]["path"] == "/v1/chat/completions"
    assert all(k.lower() != "authorization" for k in logged[0]["headers"])
    assert any(k.lower() == "user-agent" for k in logged[0]["headers"])


async def test_patch_config_starts_and_ends_an_outage(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    assert (await admin.patch(outage=True))["outage"] is True
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages("hi"))
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        await client.moderations.create(input="hi")
    await admin.patch(outage=False)
    assert (await client.moderations.create(input="hi")).results
    assert (await admin.stats())["by_outcome"] == {"503": 2, "ok": 1}


async def test_patch_config_rejects_bad_knobs(admin: FakeAdmin) -> None:
    with pytest.raises(ValueError, match="p_500"):
        await admin.patch(p_500=3)
    with pytest.raises(ValueError, match="unknown knob"):
        await admin.patch(p_oops=0.1)
    assert (await admin.config())["p_500"] == 0


async def test_seeded_faults_repeat_after_reset(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(p_500=0.5, seed=123)

    async def statuses() -> list[int]:
        await admin.reset()
        seen = []
        for _ in range(12):
            try:
                await client.moderations.create(input="hi")
                seen.append(200)
            except openai.InternalServerError as exc:
                seen.append(exc.status_code)
        return seen

    first = await statuses()
    assert first == await statuses()
    assert set(first) == {200, 500}


async def test_unknown_paths_and_bad_schemas_get_openai_errors(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="text-embedding-3-small", input="x")
    bad_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=messages("x"), response_format=bad_format
        )
    assert caught.value.code == "invalid_schema"
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]


# -- the real command, as a subprocess ---------------------------------------------------------


async def test_subprocess_fake_takes_knobs_from_the_environment() -> None:
    with fake_openai_server(p_500=1.0, latency_ms=1) as url:
        sdk = AsyncOpenAI(base_url=url, api_key="t", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            await sdk.chat.completions.create(model=MODEL, messages=messages("hi"))
        await sdk.close()
        async with FakeAdmin(url) as admin:
            assert (await admin.stats())["by_outcome"] == {"500": 1}


def test_cli_exits_cleanly_on_sigterm_and_rejects_bad_knobs() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODSTREAM_FAKE_")}
    command = [sys.executable, "-m", "consumer", "fake-openai", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Only once it answers are its signal handlers in place: a SIGTERM before that is not
        # the clean stop under test.
        origin = f"http://127.0.0.1:{port}"
        wait_until_ready("fake-openai", process, lambda: health_answers(origin), within=30)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "NOT a model" in output
    bad = subprocess.run(
        command, env=env | {"MODSTREAM_FAKE_P_HANG": "lots"}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "MODSTREAM_FAKE_P_HANG" in bad.stderr
