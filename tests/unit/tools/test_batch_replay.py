"""batch_replay: waiting for a batch (against a scripted batches client, no clock): a batch that
failed validation, expired or was cancelled is one clear error naming its first errors; a poll
the provider fails is polled again; the found batch of a resumed replay is the live one. And
collecting the range: ``--max-cost`` cuts it fairly across partitions before anything is sent,
and a range over one batch's limit is refused as soon as that is known."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from openai.types import Batch

import consumer.tools.batch_replay
from consumer.errors import BatchFailed, ConfigError, ProviderUnavailable
from consumer.pipeline.admit import Admitter
from consumer.pipeline.publish import Publisher
from consumer.settings import OversizePolicy, load_settings
from consumer.tools.batch_job import BatchJob
from consumer.tools.batch_replay import BatchReplayer
from consumer.tools.budget import CostBudget
from consumer.tools.cache import VerdictCache
from consumer.tools.replay_outcome import Range, StopReason
from tests.unit.tools.test_batch_results import classifier
from tests.unit.tools.test_replay import TOPIC, RangeConsumer


def batch(status: str, *, errors: int = 0, key: str | None = None, done: int = 0) -> Batch:
    data: dict[str, Any] = {
        "id": f"batch_{status}",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file_1",
        "completion_window": "24h",
        "status": status,
        "created_at": 1,
        "request_counts": {"total": 10, "completed": done, "failed": 0},
        "metadata": {"modstream_key": key} if key else None,
    }
    if errors:
        data["errors"] = {
            "object": "list",
            "data": [
                {"code": "mismatched_model", "line": i + 1, "message": f"bad line {i + 1}"}
                for i in range(errors)
            ],
        }
    return Batch.model_validate(data)


class Batches:
    """``client.batches``: retrieve answers the script in order; list yields ``listed``."""

    def __init__(self, script: list[Batch | Exception], listed: list[Batch] | None = None) -> None:
        self.script = script
        self.listed = listed or []

    async def retrieve(self, batch_id: str) -> Batch:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def list(self, limit: int) -> AsyncIterator[Batch]:
        async def pages() -> AsyncIterator[Batch]:
            for found in self.listed:
                yield found

        return pages()


class Progress:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def submitted(self, batch_id: str, total: int, *, resumed: bool) -> None:
        self.seen.append(f"submitted {batch_id}")

    def polled(self, status: str, completed: int, failed: int) -> None:
        self.seen.append(f"{status} {completed}")

    def finished(self, status: str) -> None:
        self.seen.append(f"finished {status}")


def job(batches: Batches, progress: Progress) -> BatchJob:
    client = type("Client", (), {"batches": batches, "base_url": "http://fake/v1"})()
    return BatchJob(client, progress, poll_s=0.0, max_outage_s=60.0)


async def test_a_batch_that_failed_validation_is_one_line_with_its_first_errors() -> None:
    progress = Progress()
    waiting = job(Batches([batch("failed", errors=7)]), progress)
    with pytest.raises(BatchFailed) as caught:
        await waiting.wait(batch("validating"))
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 3
    assert "batch_failed failed" in message
    assert "line 1: mismatched_model: bad line 1" in message and "line 5:" in message
    assert "line 6:" not in message and "(and 2 more)" in message
    assert progress.seen == ["validating 0", "failed 0", "finished failed"]


@pytest.mark.parametrize("status", ["expired", "cancelled"])
async def test_an_expired_or_cancelled_batch_is_an_error(status: str) -> None:
    waiting = job(Batches([batch("in_progress"), batch(status)]), Progress())
    with pytest.raises(BatchFailed, match=f"{status}; nothing was published"):
        await waiting.wait(batch("validating"))


async def test_a_failed_poll_is_polled_again_and_the_batch_completes() -> None:
    progress = Progress()
    script: list[Batch | Exception] = [
        batch("in_progress", done=3),
        ProviderUnavailable("502 from the gateway"),
        batch("completed", done=10),
    ]
    waiting = job(Batches(script), progress)
    done = await waiting.wait(batch("validating"))
    assert done.status == "completed" and done.id == "batch_completed"
    assert progress.seen == [
        "validating 0",
        "in_progress 3",
        "in_progress 3",  # the failed poll: the last state known, shown again
        "completed 10",
        "finished completed",
    ]


async def test_a_resumed_replay_finds_only_a_live_batch_with_its_key() -> None:
    listed = [
        batch("failed", key="k1"),
        batch("cancelled", key="k1"),
        batch("in_progress", key="other"),
        batch("in_progress"),
        batch("completed", key="k1"),
    ]
    finder = job(Batches([], listed), Progress())
    found = await finder.find("k1")
    assert found is not None and found.id == "batch_completed"
    assert await finder.find("k2") is None


def collector(max_cost: float | None) -> BatchReplayer:
    """A batch replay whose range reading is real (round robin over a scripted consumer)."""
    made = BatchReplayer(
        settings=None,  # type: ignore[arg-type]  # set below
        classifier=classifier(),
        admitter=None,  # type: ignore[arg-type]
        cache=VerdictCache(),
        publisher=Publisher.__new__(Publisher),
        budget=CostBudget(None),
        progress=Progress(),
        topic="in",
    )
    made.settings = load_settings(openai_api_key="k")
    made.admitter = Admitter(
        model="gpt-4o-mini",
        budget_tokens=10_000,
        max_input_tokens=10_000,
        oversize=OversizePolicy.DEAD_LETTER,
    )
    made.budget = CostBudget(max_cost)
    return made


def three_partitions(count: int) -> tuple[RangeConsumer, Range]:
    tps = [TopicPartition(TOPIC, p) for p in range(3)]
    consumer = RangeConsumer({tp: list(range(count)) for tp in tps})
    return consumer, Range({tp: 0 for tp in tps}, {tp: count for tp in tps})


async def test_max_cost_cuts_the_range_fairly_before_anything_is_submitted() -> None:
    consumer, bounds = three_partitions(10)
    probe = collector(None)
    items = await probe.collect(consumer, bounds)
    assert len(items) == 30 and probe.result.stopped is None
    worst = max(item.worst for item in items)
    assert worst > 0

    consumer, bounds = three_partitions(10)
    capped = collector(worst * 7.5)
    items = await capped.collect(consumer, bounds)
    per = Counter(item.envelope.partition for item in items)
    assert sum(per.values()) == 7 and max(per.values()) - min(per.values()) <= 1, per
    assert capped.result.stopped is StopReason.BUDGET
    assert capped.result.stopped_at == {0: 3, 1: 2, 2: 2}
    assert capped.result.left == 30 - 7
    assert sum(item.worst for item in items) <= worst * 7.5


async def test_a_range_larger_than_one_batch_is_refused_while_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer.tools.batch_replay, "MAX_LINES", 4)
    source, bounds = three_partitions(400)  # more than one fetch (256 records) per partition
    with pytest.raises(ConfigError, match="more than 4 requests"):
        await collector(None).collect(source, bounds)
    assert all(position < 400 for position in source.positions.values()), "not read to the end"
