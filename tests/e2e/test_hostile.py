"""Hostile input and secrets, end to end: the real broker, the fake model over HTTP, modstream.

- every prompt-injection attempt of the corpus (as text, and as context) reaches the model only
  inside its block: the requests the fake received have the static system message, one
  unbroken block per field, nothing of the content outside it, and never the metadata; each
  input gets a verdict whose action is the policy's decision for its scores;
- the size and token limits dead-letter with a reason that names the limit and the overage;
- the API key and the SASL password appear nowhere the pipeline writes (output topics, logs at
  DEBUG), also when the provider rejects the key;
- ``MODSTREAM_REDACT_DEAD_LETTERS=true`` keeps only the payload's hash (and drops the reply).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from consumer.app import serve
from consumer.model.policy import PromptBuilder, load_policy, load_prompt
from consumer.testing.fake_openai import FakeAdmin
from tests.e2e.harness import new_run
from tests.e2e.scan import raw_bytes, secret_forms
from tests.fake_server import fake_openai_server
from tests.injection_corpus import INJECTIONS, METADATA_CANARY

pytestmark = pytest.mark.timeout(300)

POLICY = load_policy()
BUILDER = PromptBuilder(POLICY, load_prompt())
_ENTITY = re.compile(r"&(amp|lt|gt);")


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with fake_openai_server(latency_ms=1, seed=21) as url:
        yield url


def unescape(block: str) -> str:
    assert "<" not in block and ">" not in block
    assert block.count("&") == len(_ENTITY.findall(block))
    return _ENTITY.sub(lambda m: {"amp": "&", "lt": "<", "gt": ">"}[m.group(1)], block)


def blocks_of(user: str) -> tuple[str, dict[str, str]]:
    """The user message's skeleton (blocks emptied) and its unescaped blocks; asserts one
    unbroken ``<content>`` block and at most one ``<context>`` block."""
    tags = Counter(re.findall(r"</?(?:content|context)>", user))
    assert tags["<content>"] == tags["</content>"] == 1, tags
    assert tags["<context>"] == tags["</context>"] <= 1, tags
    found = {}
    for tag in ("context", "content"):
        match = re.search(rf"<{tag}>\n(.*)\n</{tag}>", user, flags=re.DOTALL)
        if match:
            found[tag] = unescape(match.group(1))
            user = user[: match.start(1)] + user[match.end(1) :]
    return user, found


async def chat_requests(url: str) -> list[dict[str, Any]]:
    async with FakeAdmin(url) as admin:
        logged = await admin.requests(limit=1000)
    return [r["body"] for r in logged if r["path"].endswith("/chat/completions")]


# ---- prompt injection ----------------------------------------------------------------------


async def test_injection_corpus_stays_inside_its_block(kafka_bootstrap: str, fake: str) -> None:
    async with FakeAdmin(fake) as admin:
        await admin.reset()
    run = new_run(kafka_bootstrap, fake, partitions=1)
    await run.create_topics()
    sent: list[tuple[str, str | None]] = []
    values: list[bytes | None] = []
    for i, case in enumerate(INJECTIONS):
        values.append(json.dumps(case.request(f"text-{i}")).encode())
        sent.append((case.text, case.context))
    for i, case in enumerate(INJECTIONS):  # the same attempts, as the context of a reply
        text = f"I agree with the post above (reply {i})."
        values.append(json.dumps({"id": f"ctx-{i}", "text": text, "context": case.text}).encode())
        sent.append((text, case.text))
    await run.produce(values)

    await serve(run.settings(), exit_when_idle=2)

    summary = await run.outputs()
    assert summary.dead_letters == []
    assert sorted(v.source.offset for v in summary.verdicts) == list(range(len(values)))

    requests = await chat_requests(fake)
    assert len(requests) == len(values), "one model call per input (no faults, no repairs)"
    benign_skeletons = {
        blocks_of(BUILDER.messages("x", context)[1]["content"])[0] for context in (None, "y")
    }
    received: list[tuple[str, str | None]] = []
    for body in requests:
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"] == BUILDER.system, "content reached the system message"
        skeleton, found = blocks_of(messages[1]["content"])
        assert skeleton in benign_skeletons, "content outside its block"
        received.append((found["content"], found.get("context")))
        assert METADATA_CANARY not in json.dumps(body), "metadata reached the model"
    assert Counter(received) == Counter(sent), "every block unescapes to exactly what was sent"

    # The model scores, the policy decides: whatever a text asked for, the action is the
    # policy's for the scores the model gave.
    for verdict in summary.verdicts:
        scores = {name: c.score for name, c in verdict.categories.items()}
        flagged, action, _ = POLICY.decide(scores)
        assert (verdict.action, verdict.flagged) == (action, flagged), verdict.source.offset
        assert not verdict.truncated
    # Injection does not make the judge blind: the threats inside attempts are still flagged.
    by_offset = {v.source.offset: v for v in summary.verdicts}
    dan = next(i for i, c in enumerate(INJECTIONS) if c.name == "dan")
    assert by_offset[dan].flagged


# ---- limits --------------------------------------------------------------------------------


async def test_limit_dead_letters_name_the_limit_and_the_overage(
    kafka_bootstrap: str, fake: str
) -> None:
    run = new_run(kafka_bootstrap, fake, partitions=1)
    await run.create_topics()
    too_big = json.dumps({"id": "big", "text": "x" * 5_000}).encode()
    too_many_tokens = json.dumps({"id": "tokens", "text": " ".join(["word"] * 150)}).encode()
    fine = json.dumps({"id": "ok", "text": "hello"}).encode()
    await run.produce([too_big, too_many_tokens, fine])

    await serve(run.settings(max_message_bytes=2_000, max_input_tokens=100), exit_when_idle=2)

    summary = await run.outputs()
    dead = {d.source.offset: d for d in summary.dead_letters}
    assert set(dead) == {0, 1}
    assert [v.source.offset for v in summary.verdicts] == [2]
    size = len(too_big)
    assert dead[0].error_class == "AdmissionError"
    assert dead[0].error_message == (
        f"record is {size:,} bytes; the limit (MODSTREAM_MAX_MESSAGE_BYTES) is 2,000: "
        f"{size - 2_000:,} over"
    )
    assert base64.b64decode(dead[0].payload_b64 or "") == too_big  # replayable as it came
    assert dead[1].error_class == "AdmissionError"
    assert dead[1].stage == "admit"
    assert dead[1].error_message == (
        "text is 150 tokens; the limit (MODSTREAM_MAX_INPUT_TOKENS) is 100: 50 over"
    )


# ---- secrets -------------------------------------------------------------------------------


def _bad_inputs() -> list[bytes | None]:
    return [
        b"\xff\xfe not utf-8",
        b'{"id": "x", "text": ',
        json.dumps({"id": 7, "text": "id is a number"}).encode(),
        None,
    ]


async def test_secrets_appear_nowhere_the_pipeline_writes(kafka_bootstrap: str) -> None:
    api_key = f"sk-e2e-canary-{uuid.uuid4().hex}"
    password = f"sasl-e2e-canary-{uuid.uuid4().hex}"
    secret_env = {
        "OPENAI_API_KEY": api_key,
        # PLAINTEXT here (the SASL broker test uses it for real): set where it could be logged.
        "MODSTREAM_SASL_MECHANISM": "SCRAM-SHA-256",
        "MODSTREAM_SASL_USERNAME": "svc",
        "MODSTREAM_SASL_PASSWORD": password,
        "MODSTREAM_LOG_LEVEL": "DEBUG",
    }
    with fake_openai_server(api_key=api_key, p_malformed=0.2, seed=22) as url:
        run = new_run(kafka_bootstrap, url, partitions=2)
        await run.create_topics()
        good = [json.dumps({"id": f"m{i}", "text": f"hello {i}"}).encode() for i in range(30)]
        await run.produce([*good, *_bad_inputs()])
        process = run.spawn("--exit-when-idle", "2", **secret_env)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
        assert process.returncode == 0, stderr.decode()[-3000:]

        summary = await run.outputs()
        assert len(summary.verdicts) + len(summary.dead_letters) == len(good) + 4
        assert len(summary.dead_letters) >= 4
        topics = [f"{run.name}.{t}" for t in ("verdicts", "usage", "dlq")]
        written = await raw_bytes(run.settings(), topics)
        for secret in (api_key, password):
            for form in secret_forms(secret):
                assert form not in written, "a secret reached an output topic"
                assert form not in stderr, "a secret reached the logs"
        assert b"consuming" in stderr and b"dead letter" in stderr  # the logs were there


async def test_a_rejected_key_stops_the_service_without_showing_the_key(
    kafka_bootstrap: str,
) -> None:
    api_key = f"sk-wrong-canary-{uuid.uuid4().hex}"
    with fake_openai_server(api_key="sk-the-right-one", seed=23) as url:
        run = new_run(kafka_bootstrap, url, partitions=1)
        await run.create_topics()
        await run.produce([json.dumps({"id": "a", "text": "hello"}).encode()])
        process = run.spawn(
            "--exit-when-idle", "2", OPENAI_API_KEY=api_key, MODSTREAM_LOG_LEVEL="DEBUG"
        )
        _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
    assert process.returncode != 0
    assert b"OPENAI_API_KEY" in stderr  # it says what to fix
    for form in secret_forms(api_key):
        assert form not in stderr
    written = await raw_bytes(run.settings(), [f"{run.name}.{t}" for t in ("usage", "dlq")])
    for form in secret_forms(api_key):
        assert form not in written


# ---- redacted dead letters -----------------------------------------------------------------


async def test_redacted_dead_letters_keep_only_the_hash(kafka_bootstrap: str) -> None:
    private = "PRIVATE-CANARY-4111-1111-1111-1111"
    bad: list[bytes] = [
        f'{{"id": "a", "text": "{private}"'.encode(),  # broken JSON
        json.dumps({"id": "b", "text": private, "metadata": {"k": [private]}}).encode(),
        (private + "\xff").encode("latin-1"),  # not UTF-8
    ]
    good = [json.dumps({"id": f"g{i}", "text": f"{private} {i}"}).encode() for i in range(6)]
    with fake_openai_server(p_malformed=1.0, seed=24) as url:  # every reply unusable
        run = new_run(kafka_bootstrap, url, partitions=1)
        await run.create_topics()
        await run.produce([*bad, *good])
        await serve(run.settings(redact_dead_letters=True), exit_when_idle=2)

    summary = await run.outputs()
    values: list[bytes] = [*bad, *good]
    assert len(summary.dead_letters) == len(values)
    assert {d.stage for d in summary.dead_letters} == {"decode", "classify"}
    for dead in summary.dead_letters:
        assert dead.payload_redacted
        assert dead.payload_b64 is None
        assert dead.reply is None
        assert dead.payload_sha256 == hashlib.sha256(values[dead.source.offset]).hexdigest()
    dlq = await raw_bytes(run.settings(), [f"{run.name}.dlq"])
    assert private.encode() not in dlq
    assert b"4111" not in dlq
