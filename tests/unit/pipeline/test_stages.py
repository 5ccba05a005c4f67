"""Stages: one record to a delivered verdict, or to a dead letter of the stage that gave up.

The delivery is recorded here (what it was handed, refusals on demand) and classify is the fake
classifier of ``tests.unit.kafka_fakes``; decode and admit are the real stages.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
import structlog
from aiokafka.structs import TopicPartition
from structlog.testing import capture_logs

from consumer.errors import BrokerRejected, InvalidReply, PublishRejected
from consumer.ops.metrics import Metrics
from consumer.pipeline.offsets import OffsetTracker
from consumer.pipeline.publish import OutRecord, Publisher, Topics
from consumer.pipeline.source import Envelope
from consumer.pipeline.stages import Stages
from consumer.settings import load_settings
from schemas import DeadLetter
from tests.unit.kafka_fakes import Behaviour, FakeClassifier, admitter, request_bytes

pytestmark = pytest.mark.timeout(60)

TOPICS = ("verdicts", "usage", "dlq")


class RecordedDelivery:
    """A delivery that keeps what it was handed and refuses on demand."""

    def __init__(self) -> None:
        self.delivered: list[dict[str, Any]] = []
        self.refusals: deque[PublishRejected] = deque()

    async def deliver(self, envelope: Envelope, records: Sequence[OutRecord]) -> None:
        if self.refusals:
            raise self.refusals.popleft()
        on = {topic: [r.value for r in records if r.topic == topic] for topic in TOPICS}
        self.delivered.append(
            {
                "offset": envelope.offset,
                "verdict": next((json.loads(v) for v in on["verdicts"]), None),
                "usage": [json.loads(v) for v in on["usage"]],
                "dead": next((DeadLetter.model_validate_json(v) for v in on["dlq"]), None),
            }
        )

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise AssertionError("stages never commit")

    def held(self, tracker: OffsetTracker) -> int:
        return tracker.held()

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        pass


def rig() -> tuple[Stages, RecordedDelivery, FakeClassifier, Metrics]:
    delivery, classifier, metrics = RecordedDelivery(), FakeClassifier(), Metrics()
    stages = Stages(
        load_settings(),
        admitter=admitter(),
        classify=classifier.classify,
        publisher=Publisher(None, Topics(*TOPICS)),
        delivery=delivery,
        metrics=metrics,
        policy_version=classifier.policy.version,
    )
    return stages, delivery, classifier, metrics


def envelope(offset: int, value: bytes | None = None) -> Envelope:
    value = request_bytes(offset) if value is None else value
    return Envelope("in", 0, offset, None, value, (), 1_700_000_000_000)


def processed(metrics: Metrics, outcome: str) -> float | None:
    labels = {"outcome": outcome}
    return metrics.registry.get_sample_value("modstream_messages_processed_total", labels)


async def test_a_classified_record_delivers_its_verdict_with_its_usage() -> None:
    stages, delivery, classifier, metrics = rig()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await stages.run(envelope(3))
    [out] = delivery.delivered
    assert out["verdict"]["source"]["offset"] == 3 and out["dead"] is None
    assert len(out["usage"]) == 1
    assert classifier.started == [(0, 3)]
    assert processed(metrics, "verdict") == 1
    [line] = [e for e in logs if e["event"] == "classifying"]
    assert (line["offset"], line["event_id"]) == (3, out["verdict"]["event_id"])


async def test_undecodable_bytes_are_a_decode_dead_letter_and_never_classified() -> None:
    stages, delivery, classifier, metrics = rig()
    await stages.run(envelope(0, b"\xff not json"))
    [out] = delivery.delivered
    assert out["dead"].stage == "decode" and out["dead"].attempts == 0 and out["usage"] == []
    assert classifier.started == []
    assert processed(metrics, "dead_letter") == 1


async def test_a_failed_classification_is_a_dead_letter_that_keeps_the_calls_usage() -> None:
    stages, delivery, classifier, _ = rig()
    classifier.on(0, 1, Behaviour(failure=InvalidReply("still invalid", reply="{")))
    await stages.run(envelope(1))
    [out] = delivery.delivered
    assert out["dead"].stage == "classify" and out["dead"].attempts == 1
    assert len(out["usage"]) == 1 and out["verdict"] is None


async def test_a_refused_verdict_becomes_a_publish_dead_letter_and_a_refused_one_stops() -> None:
    stages, delivery, _, _ = rig()
    delivery.refusals.append(PublishRejected("too large"))
    await stages.run(envelope(2))
    [out] = delivery.delivered
    assert out["dead"].stage == "publish" and "too large" in out["dead"].error_message
    delivery.refusals.extend([PublishRejected("too large"), PublishRejected("still")])
    with pytest.raises(BrokerRejected, match="refused a dead letter: still"):
        await stages.run(envelope(4))
