"""Replay from the pipeline's parts, without a broker: a scripted provider, in-memory Kafka.

- a replayed verdict is the pipeline's: the tiers that ran, the schema headers of the
  ``Publisher``; a cache hit is rebuilt by the verdict factory with the same tiers, and its usage
  by the ledger;
- a budget stop says, for every partition with records left, the first offset not replayed, and
  everything before it was replayed; the progress is told from start to stop;
- every client belongs to one exit stack: a cache producer started before the model client
  fails to build is stopped (it leaked before).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx2
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from openai import AsyncOpenAI

import consumer.tools.cache
import consumer.tools.replay
from consumer.errors import BrokerUnavailable, ConfigError
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.ledger import Tokens
from consumer.model.limit import Limiter
from consumer.model.request_params import choose, server_kind
from consumer.pipeline.admit import Admitter
from consumer.pipeline.decode import decode
from consumer.pipeline.publish import Publisher, Topics
from consumer.pipeline.source import Envelope
from consumer.settings import InputFormat, OversizePolicy, Settings, load_settings
from consumer.tools.budget import CostBudget
from consumer.tools.cache import VerdictCache
from consumer.tools.replay import ReplayRequest, run_replay
from consumer.tools.replay_outcome import Range, ReplayResult, StopReason
from consumer.tools.replayer import Replayer
from schemas import ModerationRequest, UsageEvent, UsageOutcome, Verdict
from tests.unit.kafka_fakes import FakeProducer, request_bytes
from tests.unit.model.test_classify import BUILDER, MODEL, USAGE, ok, reply_text
from tests.unit.model.test_tier import BUILDER as TIERED_BUILDER
from tests.unit.model.test_tier import moderation

pytestmark = pytest.mark.timeout(60)

TOPIC = "in"
EVAL = Topics("eval", "eval.usage", dead_letters="")


class RangeConsumer:
    """The part of ``AIOKafkaConsumer`` a range read uses: seek, position, getmany."""

    def __init__(self, records: dict[TopicPartition, list[int]]) -> None:
        self.records = {
            tp: [_record(tp, offset) for offset in offsets] for tp, offsets in records.items()
        }
        self.positions = {tp: 0 for tp in records}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(0)
        room = max_records or 500
        batch = {}
        for tp in partitions:
            taken = [r for r in self.records[tp] if r.offset >= self.positions[tp]][:room]
            if taken:
                batch[tp] = taken
                self.positions[tp] = taken[-1].offset + 1
                room -= len(taken)
        return batch


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    value = request_bytes(offset, f"message {tp.partition}-{offset}")
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=len(value),
        headers=[],
    )


def envelope(offset: int, text: str = "is this fine?") -> Envelope:
    return Envelope(TOPIC, 0, offset, None, request_bytes(offset, text), (), None)


class Watched:
    """A ReplayProgress that remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def started(self, total: int) -> None:
        self.told.append(f"started {total}")

    def advanced(self, result: ReplayResult) -> None:
        self.told.append("advanced")

    def stopped(self, reason: StopReason | None) -> None:
        self.told.append(f"stopped {reason}")


@pytest_asyncio.fixture
async def http() -> AsyncIterator[list[httpx2.AsyncClient]]:
    clients: list[httpx2.AsyncClient] = []
    yield clients
    for client in clients:
        await client.aclose()


def replayer(
    clients: list[httpx2.AsyncClient],
    answer: Any,
    *,
    settings: Settings | None = None,
    max_cost: float | None = None,
    tiered: bool = False,
) -> tuple[Replayer, FakeProducer]:
    transport = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    clients.append(transport)
    client = AsyncOpenAI(
        base_url="http://test/v1", api_key="k", max_retries=0, http_client=transport
    )
    classifier = Classifier(
        client,
        model=MODEL,
        params=choose(MODEL, server_kind(client.base_url), max_tokens=200, temperature=0.0),
        builder=TIERED_BUILDER if tiered else BUILDER,
        limiter=Limiter(4),
        prices=PriceTable(),
        max_backoff_s=0.01,
    )
    admitter = Admitter(
        model=MODEL,
        budget_tokens=10_000,
        max_input_tokens=10_000,
        oversize=OversizePolicy.DEAD_LETTER,
    )
    producer = FakeProducer()
    made = Replayer(
        settings or load_settings(openai_api_key="k"),
        classifier=classifier,
        admitter=admitter,
        cache=VerdictCache(),
        publisher=Publisher(producer, EVAL),
        budget=CostBudget(max_cost),
        progress=Watched(),
    )
    return made, producer


def published(producer: FakeProducer, topic: str) -> list[dict[str, Any]]:
    return [json.loads(s.value) for s in producer.acked if s.topic == topic]


async def test_a_replayed_verdict_and_its_cache_hit_carry_the_tiers_and_the_schema_headers(
    http: list[httpx2.AsyncClient],
) -> None:
    answers = iter([moderation(hate=0.5), ok(reply_text(hate=0.9))])  # uncertain: chat decides
    made, producer = replayer(http, lambda request: next(answers), tiered=True)

    await made.handle(envelope(1))
    await made.handle(envelope(2))  # the same content: answered from the cache

    first, hit = (Verdict.model_validate(v) for v in published(producer, EVAL.verdicts))
    assert [t.name for t in first.tiers] == ["moderation", "chat"]
    assert not first.cache_hit
    assert hit.cache_hit and hit.latency_ms == 0.0
    assert hit.tiers == first.tiers, "a cache hit carries the tiers that decided it"
    assert (hit.flagged, hit.action, hit.categories) == (
        first.flagged,
        first.action,
        first.categories,
    )
    assert hit.source.offset == 2 and hit.event_id != first.event_id
    usage = [UsageEvent.model_validate(u) for u in published(producer, EVAL.usage)]
    assert [u.outcome for u in usage] == [UsageOutcome.OK, UsageOutcome.OK, UsageOutcome.CACHE_HIT]
    assert usage[-1].cost_usd == 0.0 and usage[-1].source.offset == 2
    for sent in producer.acked:  # the Publisher's headers, as the pipeline writes them
        headers = dict(sent.headers)
        assert headers["content-type"] == b"application/json"
        assert headers["modstream-schema"] in (b"Verdict/1", b"UsageEvent/1")
    assert made.result.verdicts == 2 and made.result.cache_hits == 1
    assert made.result.model_calls == 2


async def test_a_budget_stop_names_the_first_offset_not_replayed_of_every_partition(
    http: list[httpx2.AsyncClient],
) -> None:
    settings = load_settings(openai_api_key="k", max_in_flight=1, concurrency=1)
    probe, _ = replayer(http, lambda request: ok())
    # Every record has content of its own (no cache hit) of about the same size.
    worst = probe.worst_case_cost(probe.admitter.admit(_request(0)))
    each = probe.classifier.ledger.cost(Tokens(USAGE["prompt_tokens"], USAGE["completion_tokens"]))
    assert each is not None and 0 < each < worst
    # Room for four calls, and the fifth message's worst case does not fit.
    made, producer = replayer(
        http, lambda request: ok(), settings=settings, max_cost=worst + 3.5 * each
    )
    tps = [TopicPartition(TOPIC, p) for p in range(3)]
    consumer = RangeConsumer({tp: list(range(10)) for tp in tps})
    bounds = Range(start={tp: 0 for tp in tps}, end={tp: 10 for tp in tps})

    result = await made.run(consumer, bounds)

    assert result.stopped_at is not None
    assert sorted(result.stopped_at) == [0, 1, 2], "every partition had records left"
    assert result.cost_usd == pytest.approx(4 * each)
    # Partitions read in turn: four replayed are two of the first, one of each other.
    assert result.stopped_at == {0: 2, 1: 1, 2: 1}
    assert result.stopped is StopReason.BUDGET and result.left == 30 - 4
    replayed: dict[int, list[int]] = {}
    for verdict in published(producer, EVAL.verdicts):
        replayed.setdefault(verdict["source"]["partition"], []).append(verdict["source"]["offset"])
    for partition, first in result.stopped_at.items():
        assert sorted(replayed.get(partition, [])) == list(range(first)), partition
    watched = made.progress
    assert isinstance(watched, Watched)
    assert watched.told[0] == "started 30" and watched.told[-1] == "stopped budget"
    assert watched.told.count("advanced") == 4, "the bar counts what was replayed, no more"


def _request(offset: int) -> ModerationRequest:
    return decode(envelope(offset), input_format=InputFormat.JSON, max_message_bytes=10_000)


class StartStop:
    """Stands in for the cache's AIOKafkaProducer: remembers whether it was stopped."""

    made: ClassVar[list[StartStop]] = []

    def __init__(self, **options: Any) -> None:
        self.started = self.stopped = False
        StartStop.made.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def offline_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[StartStop]]:
    """Kafka's admin calls answered in memory; the cache topic empty; its producer a fake."""

    async def partitions(options: dict[str, Any], topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, 0)]

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    async def empty(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return
        yield  # an async generator that yields nothing

    StartStop.made = []
    monkeypatch.setattr(consumer.tools.replay, "require_topics", nothing)
    monkeypatch.setattr(consumer.tools.replay, "topic_partitions", partitions)
    monkeypatch.setattr(consumer.tools.cache, "create_missing", nothing)
    monkeypatch.setattr(consumer.tools.cache, "read_topics", empty)
    monkeypatch.setattr(consumer.tools.cache, "AIOKafkaProducer", StartStop)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MODSTREAM_AZURE_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    yield StartStop.made


async def test_the_cache_producer_is_stopped_when_the_model_client_cannot_be_built(
    offline_kafka: list[StartStop], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(consumer.tools.replay, "create_missing", nothing)
    settings = load_settings(openai_api_key="")  # no key, no base URL: no model client
    request = ReplayRequest(topic=TOPIC, to_topic="e", cache_topic="cache")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await run_replay(settings, request)
    [producer] = offline_kafka
    assert producer.started and producer.stopped


async def test_the_cache_producer_is_stopped_when_the_output_topics_cannot_be_made(
    offline_kafka: list[StartStop], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broker_down(*args: Any, **kwargs: Any) -> None:
        raise BrokerUnavailable("no broker")

    monkeypatch.setattr(consumer.tools.replay, "create_missing", broker_down)
    request = ReplayRequest(topic=TOPIC, to_topic="e", cache_topic="cache")
    with pytest.raises(BrokerUnavailable):
        await run_replay(load_settings(openai_api_key="k"), request)
    [producer] = offline_kafka
    assert producer.started and producer.stopped
