"""Operations end to end: ``modstream consume`` as a real process, the real broker, the fake
model over HTTP, and its ``/metrics``, ``/healthz`` and ``/readyz`` scraped over HTTP.

- ``/readyz`` is 503 while the consumer waits for partitions and 200 once it owns them. The
  wait is made certain, not hoped for: another member of the group holds every partition and
  blocks in its revoke callback, so the rebalance that would assign partitions to modstream
  cannot finish until the test lets it.
- During a provider outage nothing completes: lag is above zero, retries and the open circuit
  show, and the pod stays ready (the broker is fine). After it, the counters move to the
  number of messages and the lag of every partition falls to zero.
- No secret (the API key, a SASL password) and no message text reaches stderr, which is JSON
  lines throughout and carries partition, offset and event id on per-message lines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from consumer.testing.fake_openai import FakeAdmin
from tests.e2e.harness import Consumer, Endpoints, Run, new_run, until
from tests.fake_server import fake_openai_server, free_port

pytestmark = pytest.mark.timeout(300)

API_KEY = "sk-proj-OPS-TEST-recognisable-key-7f3a9c"
SASL_PASSWORD = "sasl-OPS-TEST-recognisable-password-51"
CONTENT_MARKER = "zebracorn-content-marker"
MESSAGES = 240
PARTITIONS = 6


# ---- helpers --------------------------------------------------------------------------------


class HoldRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """A group member that keeps its partitions until released: while its revoke callback
    waits, the group's rebalance (and so any new member's assignment) cannot complete."""

    def __init__(self) -> None:
        self.assignments: list[set[TopicPartition]] = []
        self.assigned = asyncio.Event()
        self.revoking = asyncio.Event()
        self.release = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if set(revoked):
            self.revoking.set()
            await self.release.wait()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.assignments.append(set(assigned))
        self.assigned.set()


def messages(n: int) -> list[bytes | None]:
    return [
        json.dumps(
            {"id": f"m{i}", "text": f"{CONTENT_MARKER} number {i}: a friendly note"}
        ).encode()
        for i in range(n)
    ]


def spawn(run: Run, port: int, **env: str) -> Consumer:
    return run.start(
        MODSTREAM_METRICS_PORT=str(port),
        MODSTREAM_METRICS_HOST="127.0.0.1",
        OPENAI_API_KEY=API_KEY,
        MODSTREAM_SASL_USERNAME="modstream",
        MODSTREAM_SASL_PASSWORD=SASL_PASSWORD,
        MODSTREAM_LOG_LEVEL="DEBUG",
        **env,
    )


def assert_no_secret_or_content(stderr: str) -> None:
    assert API_KEY not in stderr, "the API key reached the logs"
    assert SASL_PASSWORD not in stderr, "the SASL password reached the logs"
    assert CONTENT_MARKER not in stderr, "message text reached the logs"


# ---- the tests ------------------------------------------------------------------------------


async def test_metrics_move_lag_falls_to_zero_and_ready_after_assignment(
    kafka_bootstrap: str,
) -> None:
    with fake_openai_server(latency_ms=5, api_key=API_KEY, seed=7) as url:
        run = new_run(kafka_bootstrap, url, partitions=PARTITIONS)
        await run.create_topics()
        port = free_port()
        ops = Endpoints(port)
        admin = FakeAdmin(url)
        hold = HoldRebalance()
        holder = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=f"{run.name}.group",
            enable_auto_commit=False,
        )
        await holder.start()
        consumer: Consumer | None = None
        try:
            holder.subscribe([run.input_topic], listener=hold)
            await asyncio.wait_for(hold.assigned.wait(), 60)
            assert len(hold.assignments[-1]) == PARTITIONS

            # 1. Not ready while waiting for partitions: the holder blocks the rebalance.
            consumer = spawn(
                run,
                port,
                MODSTREAM_MAX_IN_FLIGHT="50",
                MODSTREAM_CONCURRENCY="8",
                MODSTREAM_CIRCUIT_FAILURE_THRESHOLD="3",
                MODSTREAM_CIRCUIT_RESET_S="0.2",
                MODSTREAM_RETRY_MAX_BACKOFF_S="0.5",
            )

            async def alive() -> bool:
                answer = await ops.status("/healthz")
                return answer is not None and answer[0] == 200

            await until(
                "/healthz answers", alive, within=60, unless=consumer.exited, context=consumer.tail
            )
            await asyncio.wait_for(hold.revoking.wait(), 60)  # modstream has joined the group
            answer = await ops.status("/readyz")
            assert answer is not None
            status, body = answer
            assert status == 503, body
            assert body["status"] == "not ready"
            assert "no partitions assigned" in body["reason"]
            assert (await ops.scrape()).get("modstream_assigned_partitions") == 0

            # 2. Ready once partitions are assigned; all of them after the holder leaves.
            hold.assigned.clear()
            hold.release.set()
            await asyncio.wait_for(hold.assigned.wait(), 60)
            await holder.stop()

            async def ready_with_all_partitions() -> bool:
                answer = await ops.status("/readyz")
                scrape = await ops.scrape()
                return (
                    answer is not None
                    and answer[0] == 200
                    and scrape.get("modstream_assigned_partitions") == PARTITIONS
                )

            await until(
                "ready with every partition",
                ready_with_all_partitions,
                within=90,
                unless=consumer.exited,
                context=consumer.tail,
            )
            assert (await ops.status("/readyz")) == (200, {"status": "ready"})

            # 3. A provider outage: messages arrive, none completes, lag shows, still ready.
            await admin.patch(outage=True)
            await run.produce(messages(MESSAGES))
            before = await ops.scrape()
            assert before.get("modstream_messages_processed_total", outcome="verdict") == 0

            async def outage_visible() -> bool:
                scrape = await ops.scrape()
                return (
                    scrape.total("modstream_consumer_lag") > 0
                    and scrape.get("modstream_retries_total", reason="provider_unavailable") > 0
                    and scrape.get("modstream_circuit_state", state="closed") == 0
                )

            await until(
                "lag, retries and an open circuit during the outage",
                outage_visible,
                unless=consumer.exited,
                context=consumer.tail,
            )
            during = await ops.scrape()
            assert during.get("modstream_messages_processed_total", outcome="verdict") == 0
            assert during.get("modstream_messages_in_flight") > 0
            assert (
                during.get(
                    "modstream_model_calls_total",
                    model="gpt-4o-mini",
                    outcome="provider_unavailable",
                )
                > 0
            )
            answer = await ops.status("/readyz")
            assert answer is not None and answer[0] == 200, "a provider outage is not unreadiness"

            # 4. The outage ends: counters move to the number of messages, lag falls to zero.
            await admin.patch(outage=False)
            seen: list[float] = []

            async def all_done_and_caught_up() -> bool:
                scrape = await ops.scrape()
                seen.append(scrape.get("modstream_messages_processed_total", outcome="verdict"))
                lags = scrape.series("modstream_consumer_lag")
                return (
                    seen[-1] == MESSAGES
                    and len(lags) == PARTITIONS
                    and all(v == 0 for v in lags.values())
                )

            await until(
                "every message processed and lag zero",
                all_done_and_caught_up,
                unless=consumer.exited,
                context=consumer.tail,
            )
            assert seen == sorted(seen), "a counter went backwards"
            after = await ops.scrape()
            assert after.get("modstream_messages_fetched_total") == MESSAGES
            assert after.get("modstream_messages_processed_total", outcome="dead_letter") == 0
            assert after.get("modstream_messages_in_flight") == 0
            assert after.get("modstream_circuit_state", state="closed") == 1
            ok_calls = after.get("modstream_model_calls_total", model="gpt-4o-mini", outcome="ok")
            assert ok_calls >= MESSAGES
            assert (
                after.get("modstream_model_call_duration_seconds_count", model="gpt-4o-mini")
                >= ok_calls
            )
            assert after.get("modstream_tokens_total", model="gpt-4o-mini", kind="prompt") > 0
            assert after.get("modstream_tokens_total", model="gpt-4o-mini", kind="completion") > 0
            assert after.get("modstream_cost_usd_total", model="gpt-4o-mini") > 0
            assert after.get("modstream_commit_duration_seconds_count") > 0
            assert any(
                dict(labels).get("model") == "gpt-4o-mini"
                for labels in after.series("modstream_info")
            )
            committed = await run.committed()
            assert committed == await run.end_offsets(), "the lag metric agrees with the group"

            # 5. A clean stop; then the logs.
            code = await consumer.stop(60)
            text = consumer.logs.text()
            assert code == 0, text[-3000:]
        finally:
            if consumer is not None:
                consumer.kill_if_running()
            hold.release.set()
            await holder.stop()
            await admin.close()
            await ops.close()

    assert_no_secret_or_content(text)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    per_message = [line for line in lines if {"partition", "offset", "event_id"} <= set(line)]
    assert any(line["event"] == "classifying" for line in per_message)
    assert any(line["event"] == "model call failed, retrying" for line in per_message)
    hidden = [line["content"] for line in per_message if "content" in line]
    assert hidden and all("chars hidden" in c for c in hidden)


async def test_a_rejected_key_stops_the_consumer_without_logging_it(kafka_bootstrap: str) -> None:
    with fake_openai_server(api_key="sk-the-provider-expects-another-key") as url:
        run = new_run(kafka_bootstrap, url, partitions=1)
        await run.create_topics()
        await run.produce(messages(3))
        consumer = spawn(run, free_port())
        code = await consumer.wait(120)
    text = consumer.logs.text()
    assert code == 3, text[-3000:]  # a fatal error: exit 3 with a clear message
    assert "401" in text and "OPENAI_API_KEY" in text
    assert_no_secret_or_content(text)
