"""Shadow evaluation end to end: the real broker, the fake model over HTTP, modstream in-process.

One input topic is consumed twice, by two groups writing to their own verdict topics: once
without shadow, once with a candidate (another model, a stricter policy) on 20 % of the inputs.
Production's verdicts must be the same both times (every field but the two clocks,
``created_at`` and ``latency_ms``); the shadow topic must hold one verdict for each sampled
input, pointing at its production verdict; ``eval --baseline`` must report the agreement the
verdicts show. A candidate that cannot work at all leaves production as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.app import serve
from consumer.kafka.topics import ensure_topics
from consumer.ops.metrics import Metrics
from consumer.settings import Settings
from consumer.shadow.sample import in_share
from consumer.tools.evaluate import run_eval
from consumer.tools.report import read_events, read_topic
from consumer.tools.sample import CLEAN, HARMFUL
from schemas import UsageEvent, Verdict
from tests.e2e.harness import Run, Scrape, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

MESSAGES = 300
SHARE = 0.2
CANDIDATE = "gpt-4.1-mini"
#: The two fields that tell when a verdict was made, not what it says.
CLOCKS = {"created_at", "latency_ms"}


def corpus() -> list[bytes | None]:
    """Every fifth message harmful, the rest clean; ids m0, m1, ..."""
    values: list[bytes | None] = []
    for i in range(MESSAGES):
        text = HARMFUL[(i // 5) % len(HARMFUL)][1] if i % 5 == 0 else CLEAN[i % len(CLEAN)]
        values.append(json.dumps({"id": f"m{i}", "text": f"{text} (#{i})"}).encode())
    return values


def stricter_policy(tmp_path: Path) -> Path:
    """The default policy with every threshold at 0.1: the fake's subcategory scores of
    harmful text (0.10-0.15) now flag, so the candidate disagrees on some inputs."""
    policy = yaml.safe_load(Path("consumer/data/policy.default.yaml").read_text())
    policy["version"] = "openai-taxonomy-1-strict"
    for category in policy["categories"]:
        category["threshold"] = 0.1
    path = tmp_path / "policy.strict.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def group(run: Run, name: str, **overrides: Any) -> Settings:
    """Settings of a consumer group of its own on ``run``'s input topic."""
    return run.settings(
        verdict_topic=f"{run.name}.{name}.verdicts",
        usage_topic=f"{run.name}.{name}.usage",
        dlq_topic=f"{run.name}.{name}.dlq",
        group_id=f"{run.name}.{name}",
        concurrency=16,
        **overrides,
    )


async def consume(settings: Settings, metrics: Metrics | None = None) -> None:
    await ensure_topics(settings, partitions=3)
    await serve(settings, exit_when_idle=2, metrics=metrics)


def by_input(verdicts: list[Verdict]) -> dict[tuple[int, int], dict[str, Any]]:
    """Each verdict but its clocks, by input offset."""
    return {
        (v.source.partition, v.source.offset): v.model_dump(mode="json", exclude=CLOCKS)
        for v in verdicts
    }


async def test_shadow_leaves_production_as_it_is_and_covers_the_sampled_share(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with fake_openai_server(latency_ms=20) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(corpus())

        plain = group(run, "plain")
        await consume(plain)
        shadowed = group(
            run,
            "shadowed",
            shadow_share=SHARE,
            shadow_model=CANDIDATE,
            shadow_policy_file=stricter_policy(tmp_path),
            # Room for every sampled input at once: this test wants none dropped.
            shadow_budget_share=0.5,
        )
        metrics = Metrics()
        await consume(shadowed, metrics)

        without = await read_events(plain, plain.verdict_topic, Verdict)
        with_shadow = await read_events(shadowed, shadowed.verdict_topic, Verdict)
        shadow_topic = shadowed.effective_shadow_topic
        shadows = await read_events(shadowed, shadow_topic, Verdict)
        shadow_usage = await read_events(shadowed, f"{shadow_topic}.usage", UsageEvent)
        production_usage = await read_events(shadowed, shadowed.usage_topic, UsageEvent)

        # Production: the same verdicts, whether the candidate ran beside it or not.
        assert len(without) == MESSAGES
        assert by_input(with_shadow) == by_input(without)
        assert {u.model for u in production_usage} == {plain.model}

        # The shadow topic: one verdict per sampled input, each naming its production verdict.
        sampled = {f"m{i}" for i in range(MESSAGES) if in_share(f"m{i}", SHARE)}
        assert 0.1 * MESSAGES < len(sampled) < 0.3 * MESSAGES
        dropped = Scrape.of(metrics).by("modstream_shadow_dropped_total", "reason")
        assert sorted(v.content_id for v in shadows) == sorted(sampled), dropped
        production = {v.content_id: v for v in with_shadow}
        for verdict in shadows:
            assert verdict.shadow_of == production[verdict.content_id].event_id
            assert verdict.source == production[verdict.content_id].source
            assert verdict.model == CANDIDATE
            assert verdict.policy_version == "openai-taxonomy-1-strict"
        assert all(v.shadow_of is None for v in with_shadow)
        assert {u.content_id for u in shadow_usage} == sampled
        assert {u.model for u in shadow_usage} == {CANDIDATE}

        # The metrics count what the topics hold; the stricter policy disagrees sometimes.
        scrape = Scrape.of(metrics)
        agree = scrape.get("modstream_shadow_verdicts_total", agreement="agree")
        disagree = scrape.get("modstream_shadow_verdicts_total", agreement="disagree")
        assert agree + disagree == len(sampled)
        differ = sum(v.action != production[v.content_id].action for v in shadows)
        assert disagree == differ > 0
        assert scrape.total("modstream_shadow_dropped_total") == 0
        assert scrape.total("modstream_shadow_flips_total") > 0
        assert scrape.get("modstream_shadow_cost_usd_total") == pytest.approx(
            sum(u.cost_usd or 0.0 for u in shadow_usage)
        )

        # eval --verdicts <shadow topic> --baseline <verdict topic>
        [report] = await run_eval(
            shadowed,
            [shadow_topic],
            labels=None,
            baseline=shadowed.verdict_topic,
            out=tmp_path / "eval",
        )
        assert report.verdicts == len(sampled)
        assert report.agreement == pytest.approx(agree / len(sampled))
        assert report.cost_per_1k is not None and report.cost_per_1k > 0


async def test_a_candidate_that_cannot_work_leaves_production_untouched(
    kafka_bootstrap: str,
) -> None:
    # The fake answers 404 model_not_found for a model it does not serve, every time.
    with fake_openai_server(latency_ms=5) as url:
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        await run.produce(corpus())

        plain = group(run, "plain")
        await consume(plain)
        broken = group(run, "broken", shadow_share=1.0, shadow_model="gpt-no-such-model")
        metrics = Metrics()
        await consume(broken, metrics)

        without = await read_events(plain, plain.verdict_topic, Verdict)
        with_broken = await read_events(broken, broken.verdict_topic, Verdict)
        assert len(with_broken) == MESSAGES
        assert by_input(with_broken) == by_input(without)
        assert await read_topic(broken, broken.dlq_topic) == []
        assert await read_topic(broken, broken.effective_shadow_topic) == []
        scrape = Scrape.of(metrics)
        assert scrape.get("modstream_shadow_dropped_total", reason="failed") >= 1
        assert scrape.total("modstream_shadow_verdicts_total") == 0
        assert scrape.total("modstream_dead_letters_total") == 0
