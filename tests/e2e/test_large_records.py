"""Records at the size limits, end to end, in both delivery modes: nothing wedges.

An input just under the broker's 1 MB default that can never succeed becomes a dead letter
about 1.33x its size (base64); the dead letter is cut to fit the dead-letter topic, marked
truncated, and the partition's commit point reaches the end. An output that its topic refuses
(a verdict over the verdict topic's ``max.message.bytes``) is a dead letter at stage "publish",
never retried forever.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.app import serve
from tests.e2e.harness import Run, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

NEAR_LIMIT = 990_000


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with fake_openai_server(latency_ms=1, seed=5) as url:
        yield url


async def _create(run: Run, *, verdict_max_bytes: int | None = None) -> None:
    """The run's topics with the broker's default size limits (bar the verdict topic's)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    verdicts = {"max.message.bytes": str(verdict_max_bytes)} if verdict_max_bytes else {}
    try:
        await admin.create_topics(
            [
                NewTopic(run.input_topic, 1, 1),
                NewTopic(f"{run.name}.verdicts", 1, 1, topic_configs=verdicts),
                NewTopic(f"{run.name}.usage", 1, 1),
                NewTopic(f"{run.name}.dlq", 1, 1),
            ]
        )
    finally:
        await admin.close()


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_near_limit_records_that_fail_become_truncated_dead_letters(
    kafka_bootstrap: str, fake: str, delivery: str
) -> None:
    run = new_run(kafka_bootstrap, fake, partitions=1)
    await _create(run)
    undecodable = b"\xff" + os.urandom(NEAR_LIMIT - 1)  # not UTF-8, not JSON
    words = ("lorem ipsum dolor sit amet " * (NEAR_LIMIT // 27 + 1))[: NEAR_LIMIT - 40]
    too_many_tokens = json.dumps({"id": "tokens", "text": words}).encode()
    assert len(too_many_tokens) < 1_000_000
    fine = json.dumps({"id": "ok", "text": "hello there"}).encode()
    await run.produce([fine, undecodable, fine, too_many_tokens, fine])

    await serve(run.settings(delivery=delivery), exit_when_idle=2)

    summary = await run.outputs()
    assert not summary.unreadable
    dead = {d.source.offset: d for d in summary.dead_letters}
    assert set(dead) == {1, 3}
    assert sorted(v.source.offset for v in summary.verdicts) == [0, 2, 4]
    for offset, original in ((1, undecodable), (3, too_many_tokens)):
        letter = dead[offset]
        assert letter.payload_truncated
        assert letter.payload_length == len(original)
        assert letter.payload_sha256 == hashlib.sha256(original).hexdigest()
        head = base64.b64decode(letter.payload_b64 or "")
        assert 0 < len(head) < len(original)
        assert original.startswith(head)
    assert dead[1].stage == "decode"
    assert dead[3].stage == "admit"
    assert dead[3].error_class == "AdmissionError"
    assert await run.committed() == {0: 5}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_a_verdict_its_topic_refuses_is_dead_lettered_at_publish(
    kafka_bootstrap: str, fake: str, delivery: str
) -> None:
    run = new_run(kafka_bootstrap, fake, partitions=1)
    await _create(run, verdict_max_bytes=100_000)
    fine = json.dumps({"id": "ok", "text": "hello there"}).encode()
    # The verdict carries the request's metadata: 200 kB of it is over the verdict topic's
    # limit, though the input itself is well under the input topic's.
    heavy = json.dumps({"id": "heavy", "text": "hi", "metadata": {"blob": "y" * 200_000}})
    await run.produce([fine, heavy.encode(), fine])

    await serve(run.settings(delivery=delivery), exit_when_idle=2)

    summary = await run.outputs()
    assert sorted(v.source.offset for v in summary.verdicts) == [0, 2]
    [letter] = summary.dead_letters
    assert letter.source.offset == 1
    assert letter.stage == "publish"
    assert letter.error_class == "PublishRejected"
    assert "100000-byte limit" in letter.error_message
    assert not letter.payload_truncated  # the dead-letter topic takes the whole input
    assert base64.b64decode(letter.payload_b64 or "") == heavy.encode()
    # The model call was made and paid for: its usage is recorded with the dead letter.
    assert any(u.source.offset == 1 for u in summary.usage)
    assert await run.committed() == {0: 3}
