"""Replay's guards, without a broker: where it may write, how it resumes, when it gives up.

- a ``--to-topic`` (or its ``.usage``) that is the topic replayed, a service topic or the cache
  is refused naming the setting, unless forced;
- ``--from-offset`` takes one offset or partition:offset pairs (what a stopped replay prints);
- the outage rule: only unreachable errors count, a success restarts the count;
- a replay against a model that never answers ends, cancelling what was in flight, and says
  where it stopped; a budget-capped replay of three partitions is a fair sample of them.
"""

from __future__ import annotations

from collections import Counter

import httpx2
import pytest
from aiokafka import TopicPartition

from consumer.errors import ConfigError, ProviderUnavailable, RateLimited
from consumer.model.ledger import Tokens
from consumer.settings import load_settings
from consumer.tools.outage import OutageWatch
from consumer.tools.replay import ReplayRequest, check_destination, parse_offsets
from consumer.tools.replay_outcome import Range, StopReason
from tests.unit.model.test_classify import USAGE, ok
from tests.unit.tools.test_replay import (
    EVAL,
    TOPIC,
    RangeConsumer,
    _request,
    http,
    published,
    replayer,
)

pytestmark = pytest.mark.timeout(60)
_ = http  # the fixture, imported for the tests below

SETTINGS = load_settings(openai_api_key="k")


@pytest.mark.parametrize(
    ("to_topic", "named"),
    [
        ("in", "--topic"),
        (SETTINGS.input_topic, "MODSTREAM_INPUT_TOPIC"),
        (SETTINGS.verdict_topic, "MODSTREAM_VERDICT_TOPIC"),
        (SETTINGS.usage_topic, "MODSTREAM_USAGE_TOPIC"),
        (SETTINGS.dlq_topic, "MODSTREAM_DLQ_TOPIC"),
        ("cache", "--cache-topic"),
        (SETTINGS.usage_topic.removesuffix(".usage"), "MODSTREAM_USAGE_TOPIC"),  # its .usage
    ],
)
def test_a_to_topic_that_is_not_an_evaluation_topic_is_refused_naming_the_setting(
    to_topic: str, named: str
) -> None:
    request = ReplayRequest(topic="in", to_topic=to_topic, cache_topic="cache")
    with pytest.raises(ConfigError, match=named) as raised:
        check_destination(SETTINGS, request)
    assert repr(to_topic) in str(raised.value) and "--force" in str(raised.value)
    check_destination(SETTINGS, ReplayRequest(**{**request.__dict__, "force": True}))


def test_an_evaluation_topic_is_accepted() -> None:
    check_destination(SETTINGS, ReplayRequest(topic="in", to_topic="eval.prompt1"))


def test_from_offset_is_one_offset_or_partition_offset_pairs() -> None:
    assert parse_offsets("12") == 12
    assert parse_offsets("0:12,2:40") == {0: 12, 2: 40}
    with pytest.raises(ConfigError, match="partition:offset"):
        parse_offsets("0:x")


def test_only_unreachable_errors_count_and_a_success_restarts_the_count() -> None:
    now = [0.0]
    watch = OutageWatch(10, clock=lambda: now[0])
    watch.failed(RateLimited("busy"), successes=0)
    now[0] = 100
    assert not watch.expired(0), "a 429 is an answer"
    watch.failed(ProviderUnavailable("refused"), successes=0)
    now[0] = 105
    watch.failed(ProviderUnavailable("refused again"), successes=0)
    assert not watch.expired(0)
    now[0] = 110
    assert watch.expired(0) and watch.last_error is not None
    assert watch.last_error.message == "refused again"
    assert not watch.expired(1), "a call answered since"
    watch.failed(ProviderUnavailable("refused"), successes=1)
    assert not watch.expired(1), "a new run of failures starts now"


def _three_partitions(n: int) -> tuple[RangeConsumer, Range]:
    tps = [TopicPartition(TOPIC, p) for p in range(3)]
    consumer = RangeConsumer({tp: list(range(n)) for tp in tps})
    return consumer, Range(start={tp: 0 for tp in tps}, end={tp: n for tp in tps})


async def test_a_replay_against_a_model_that_never_answers_ends_saying_where(
    http: list[httpx2.AsyncClient],
) -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    made, producer = replayer(http, down)
    made.outage.limit_s = 0.3
    consumer, bounds = _three_partitions(5)

    result = await made.run(consumer, bounds)

    assert result.stopped is StopReason.MODEL_UNREACHABLE
    assert result.outage is not None and "http://test/v1" in result.outage
    assert "provider_unavailable" in result.outage
    assert result.stopped_at == {0: 0, 1: 0, 2: 0} and result.left == 15
    assert result.verdicts == 0 and not published(producer, EVAL.verdicts)


async def test_a_budget_capped_replay_samples_every_partition_alike(
    http: list[httpx2.AsyncClient],
) -> None:
    probe, _ = replayer(http, lambda request: ok())
    each = probe.classifier.ledger.cost(Tokens(USAGE["prompt_tokens"], USAGE["completion_tokens"]))
    worst = probe.worst_case_cost(probe.admitter.admit(_request(0)))
    assert each is not None
    made, producer = replayer(http, lambda request: ok(), max_cost=worst + 10.5 * each)
    consumer, bounds = _three_partitions(20)

    result = await made.run(consumer, bounds)

    assert result.stopped is StopReason.BUDGET and 0 < result.verdicts < 60
    per = Counter(v["source"]["partition"] for v in published(producer, EVAL.verdicts))
    assert set(per) == {0, 1, 2} and max(per.values()) - min(per.values()) <= 1, per
    for partition, first in (result.stopped_at or {}).items():
        assert per[partition] == first, "each partition's replayed part is its head"
