"""The fake's Files and Batches API over real HTTP, driven by the official openai SDK.

Fixtures (``fake_url``, ``admin``, ``client``) are conftest.py's: one fake per module, reset per
test. Batches here take ``batch_delay_s`` = 0 unless a test needs one to wait: it then sets a
long delay and shortens it with ``PATCH /_fake/config`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import openai
import pytest
from openai import AsyncOpenAI
from openai.types import Batch, FileObject, ModerationCreateResponse
from openai.types.chat import ChatCompletion

from consumer.testing.fake_openai import FakeAdmin
from tests.integration.test_fake_openai import MODEL, REPLY_FORMAT, messages

CHAT: Final = "/v1/chat/completions"
#: Long enough that a batch cannot finish while a test looks at it.
FOREVER_S = 3600.0


@pytest.fixture(autouse=True)
async def _no_delay(admin: FakeAdmin) -> None:
    await admin.patch(batch_delay_s=0.0)


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": messages(content), **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


async def upload(client: AsyncOpenAI, lines: list[Any]) -> FileObject:
    return await client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")


async def submit(client: AsyncOpenAI, lines: list[Any], endpoint: Any = CHAT) -> Batch:
    stored = await upload(client, lines)
    return await client.batches.create(
        input_file_id=stored.id, endpoint=endpoint, completion_window="24h"
    )


async def finished(client: AsyncOpenAI, batch_id: str) -> tuple[Batch, list[str]]:
    """The batch once it has finished, and every status seen on the way."""
    seen: list[str] = []
    for _ in range(2000):  # a bound, not a timing assertion: delay 0 finishes at the first read
        batch = await client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch, seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} still {seen[-1]}")


async def lines_of(client: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_answers_every_line_as_the_endpoint_does(client: AsyncOpenAI) -> None:
    texts = {f"msg-{i}": text for i, text in enumerate(["I will stab you", "nice day", "idiot"])}
    lines = [chat_line(cid, text, response_format=REPLY_FORMAT) for cid, text in texts.items()]
    created = await submit(client, lines)
    assert created.status == "validating"
    assert created.endpoint == CHAT
    assert created.completion_window == "24h"

    batch, seen = await finished(client, created.id)
    assert batch.status == "completed", batch.errors
    assert seen[-1] == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 3)
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None
    assert batch.model == MODEL
    assert batch.completed_at is not None and batch.in_progress_at is not None

    output = await lines_of(client, batch.output_file_id)
    assert [line["custom_id"] for line in output] != list(texts)  # the order is not kept
    by_id = {line["custom_id"]: line for line in output}
    assert sorted(by_id) == sorted(texts)
    total_prompt = total_completion = 0
    for cid, line in by_id.items():
        assert line["error"] is None
        assert line["id"].startswith("batch_req")
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.usage is not None and completion.usage.prompt_tokens > 0
        total_prompt += completion.usage.prompt_tokens
        total_completion += completion.usage.completion_tokens
        # The same content over the synchronous endpoint gets the same reply.
        direct = await client.chat.completions.create(
            model=MODEL, messages=messages(texts[cid]), response_format=REPLY_FORMAT
        )
        assert completion.choices[0].message.content == direct.choices[0].message.content
        assert completion.usage.prompt_tokens == (direct.usage and direct.usage.prompt_tokens)
    assert batch.usage is not None
    assert batch.usage.input_tokens == total_prompt
    assert batch.usage.output_tokens == total_completion


async def test_a_moderations_batch(client: AsyncOpenAI) -> None:
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/moderations", "body": {"input": "kill"}},
        {"custom_id": "b", "method": "POST", "url": "/v1/moderations", "body": {"input": "hi"}},
    ]
    batch, _ = await finished(client, (await submit(client, lines, "/v1/moderations")).id)
    assert batch.status == "completed"
    output = {line["custom_id"]: line for line in await lines_of(client, batch.output_file_id)}
    flagged = {
        cid: ModerationCreateResponse.model_validate(line["response"]["body"]).results[0].flagged
        for cid, line in output.items()
    }
    direct = await client.moderations.create(input="kill")
    assert flagged == {"a": direct.results[0].flagged, "b": False}


async def test_an_invalid_input_file_fails_the_batch_with_line_errors(
    client: AsyncOpenAI,
) -> None:
    good = chat_line("one", "hello")
    no_id = {k: v for k, v in chat_line("x", "hello").items() if k != "custom_id"}
    lines = [
        good,
        b"{not json",
        no_id,
        chat_line("one", "again"),
        {**chat_line("two", "hi"), "url": "/v1/moderations"},
        {**chat_line("three", "hi"), "method": "GET"},
    ]
    batch, seen = await finished(client, (await submit(client, lines)).id)
    assert batch.status == "failed"
    assert seen[-1] == "failed" and "in_progress" not in seen
    assert batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "missing_required_parameter", "custom_id"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "mismatched_endpoint", "url"),
        (6, "invalid_value", "method"),
    ]
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts is not None and batch.request_counts.total == 0


async def test_two_models_in_one_batch_fail_it(client: AsyncOpenAI) -> None:
    lines = [chat_line("a", "hi"), {**chat_line("b", "hi"), "body": {"model": "gpt-4o"}}]
    batch, _ = await finished(client, (await submit(client, lines)).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["mismatched_model"]


async def test_an_empty_input_file_fails_the_batch(client: AsyncOpenAI) -> None:
    batch, _ = await finished(client, (await submit(client, [])).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["empty_file"]


async def test_create_rejects_what_openai_rejects(client: AsyncOpenAI) -> None:
    stored = await upload(client, [chat_line("a", "hi")])
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        await client.batches.create(
            input_file_id="file-nope", endpoint=CHAT, completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await client.batches.create(
            input_file_id=stored.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    other = await client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.batches.create(input_file_id=other.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch-nope")


async def test_lines_that_fail_go_to_the_error_file(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(fail_when_contains="POISON")
    lines = [
        chat_line("ok-1", "hello"),
        chat_line("bad", "POISON here"),
        chat_line("ok-2", "idiot"),
        chat_line("bad-schema", "hello", response_format={"type": "json_schema"}),
    ]
    batch, _ = await finished(client, (await submit(client, lines)).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (4, 2, 2)
    output = await lines_of(client, batch.output_file_id)
    errors = {line["custom_id"]: line for line in await lines_of(client, batch.error_file_id)}
    assert sorted(line["custom_id"] for line in output) == ["ok-1", "ok-2"]
    assert sorted(errors) == ["bad", "bad-schema"]
    # Rejected requests carry their HTTP answer, as at OpenAI; ``error`` is for requests not run.
    assert errors["bad"]["error"] is None
    assert errors["bad"]["response"]["status_code"] == 500
    assert errors["bad"]["response"]["body"]["error"]["type"] == "server_error"
    assert errors["bad-schema"]["response"]["status_code"] == 400
    assert errors["bad-schema"]["response"]["body"]["error"]["type"] == "invalid_request_error"


async def test_injected_faults_fail_lines_and_reply_faults_shape_them(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    await admin.patch(p_500=1.0)
    batch, _ = await finished(client, (await submit(client, [chat_line("a", "hi")])).id)
    assert batch.request_counts is not None and batch.request_counts.failed == 1
    await admin.patch(p_500=0.0, p_truncated=1.0)
    batch, _ = await finished(client, (await submit(client, [chat_line("a", "hi")])).id)
    [line] = await lines_of(client, batch.output_file_id)
    assert line["response"]["body"]["choices"][0]["finish_reason"] == "length"


async def test_cancel_stops_a_waiting_batch(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    await admin.patch(batch_delay_s=FOREVER_S)
    created = await submit(client, [chat_line("a", "hi"), chat_line("b", "yo")])
    cancelling = await client.batches.cancel(created.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    assert (await client.batches.cancel(created.id)).status == "cancelling"  # idempotent
    await admin.patch(batch_delay_s=0.0)
    batch, _ = await finished(client, created.id)
    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None and batch.output_file_id is None
    errors = await lines_of(client, batch.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == ["a", "b"]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    with pytest.raises(openai.ConflictError, match="cancelled"):
        await client.batches.cancel(created.id)


async def test_a_completed_batch_cannot_be_cancelled(client: AsyncOpenAI) -> None:
    batch, _ = await finished(client, (await submit(client, [chat_line("a", "hi")])).id)
    with pytest.raises(openai.ConflictError, match="completed"):
        await client.batches.cancel(batch.id)


async def test_the_delay_knob_holds_a_batch_until_it_is_shortened(
    client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    await admin.patch(batch_delay_s=FOREVER_S)
    assert (await admin.config())["batch_delay_s"] == FOREVER_S
    created = await submit(client, [chat_line("a", "hi")])
    for _ in range(3):
        assert (await client.batches.retrieve(created.id)).status == "validating"
    await admin.patch(batch_delay_s=0.05)
    batch, seen = await finished(client, created.id)
    assert batch.status == "completed"
    order = ["validating", "in_progress", "completed"]
    assert seen == sorted(seen, key=order.index)  # never backwards


async def test_counters_and_reset(client: AsyncOpenAI, admin: FakeAdmin) -> None:
    stored = await upload(client, [chat_line("a", "hi")])
    for _ in range(2):
        await client.batches.create(input_file_id=stored.id, endpoint=CHAT, completion_window="24h")
    assert await admin.files_uploaded() == 1  # output files a batch writes are not uploads
    assert await admin.batches_created() == 2
    stats = await admin.stats()
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 2)
    await admin.reset()
    assert (await admin.files_uploaded(), await admin.batches_created()) == (0, 0)
    page = await client.batches.list()
    assert page.data == []
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(stored.id)


async def test_list_pages_newest_first(client: AsyncOpenAI) -> None:
    stored = await upload(client, [chat_line("a", "hi")])
    ids = [
        (
            await client.batches.create(
                input_file_id=stored.id, endpoint=CHAT, completion_window="24h"
            )
        ).id
        for _ in range(3)
    ]
    first = await client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2]
    assert first.has_more is True
    rest = await client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == ids[:1]
    assert rest.has_more is False
    assert [b.id async for b in client.batches.list(limit=1)] == ids[::-1]  # the SDK pages
    with pytest.raises(openai.BadRequestError):
        await client.batches.list(limit=0)


async def test_files_round_trip(client: AsyncOpenAI) -> None:
    data = jsonl([chat_line("a", "hi")])
    stored = await client.files.create(file=("mine.jsonl", data), purpose="batch")
    assert (stored.object, stored.purpose, stored.filename) == ("file", "batch", "mine.jsonl")
    assert stored.bytes == len(data)
    assert (await client.files.retrieve(stored.id)).id == stored.id
    assert (await client.files.content(stored.id)).content == data
    assert [f.id async for f in client.files.list(purpose="batch")] == [stored.id]
    deleted = await client.files.delete(stored.id)
    assert deleted.deleted is True and deleted.id == stored.id
    with pytest.raises(openai.NotFoundError):
        await client.files.content(stored.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.files.create(file=("x.jsonl", data), purpose="nonsense")  # type: ignore[arg-type]


async def test_the_key_and_the_outage_switch_apply(
    fake_url: str, client: AsyncOpenAI, admin: FakeAdmin
) -> None:
    await admin.patch(outage=True)
    with pytest.raises(openai.InternalServerError):
        await upload(client, [chat_line("a", "hi")])
    await admin.patch(outage=False, api_key="right")
    async with AsyncOpenAI(base_url=fake_url, api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.batches.list()
    assert await admin.files_uploaded() == 0
