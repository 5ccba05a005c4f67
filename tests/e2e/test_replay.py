"""Replay and evaluation end to end: a labelled topic, two prompt versions, a cache, a budget.

The production group consumes the topic first; replays read it by manual assignment and must
leave that group's committed offsets exactly as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.app import serve
from consumer.model.policy import prompt_file
from consumer.testing.fake_openai import FakeAdmin
from consumer.tools.evaluate import run_eval
from consumer.tools.replay import ReplayRequest, run_replay
from consumer.tools.sample import corpus
from tests.e2e.harness import Run, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(600)

MESSAGES = 500


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with fake_openai_server(latency_ms=2, seed=21) as url:
        yield url


async def labelled_run(kafka_bootstrap: str, url: str) -> Run:
    run = new_run(kafka_bootstrap, url, partitions=3)
    await run.create_topics()
    await run.produce([r.value for r in corpus(MESSAGES, seed=5, poison_share=0.0)])
    return run


async def model_calls(url: str) -> int:
    async with FakeAdmin(url) as admin:
        stats = await admin.stats()
    return int(stats["by_path"].get("/v1/chat/completions", 0))


async def test_two_prompt_versions_replayed_and_evaluated_side_by_side(
    kafka_bootstrap: str, fake: str, tmp_path: Path
) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    await serve(run.settings(), exit_when_idle=2)  # the production group, done
    committed_before = await run.committed()
    assert sum(committed_before.values()) == MESSAGES

    settings = run.settings()
    terse = settings.model_copy(update={"prompt_file": prompt_file("moderation-prompt-2-terse")})
    first = await run_replay(
        settings, ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.eval-p1")
    )
    second = await run_replay(
        terse, ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.eval-p2")
    )
    assert first.verdicts == second.verdicts == MESSAGES
    assert second.prompt_tokens < first.prompt_tokens, "the terse prompt is cheaper"

    reports = await run_eval(
        settings,
        [f"{run.name}.eval-p1", f"{run.name}.eval-p2"],
        labels="label",
        baseline=None,
        out=tmp_path,
    )
    assert [r.name for r in reports] == [f"{run.name}.eval-p1", f"{run.name}.eval-p2"]
    for report in reports:
        assert report.labelled == MESSAGES
        assert report.flagged is not None and report.flagged.f1 > 0.5
        assert report.tokens_per_1k and report.cost_per_1k
    text = (tmp_path / "report.md").read_text()
    assert f"{run.name}.eval-p1" in text and f"{run.name}.eval-p2" in text
    for png in ("confusion-0.png", "confusion-1.png", "scores-0.png", "scores-1.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert await run.committed() == committed_before, "replay must not touch the group"


async def test_identical_replay_is_free_and_dry_run_estimates_within_5_percent(
    kafka_bootstrap: str, fake: str
) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    settings = run.settings()
    cache_topic = f"{run.name}.cache"

    estimate = await run_replay(
        settings, ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.e", dry_run=True)
    )
    calls_before = await model_calls(fake)
    real = await run_replay(
        settings,
        ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.e", cache_topic=cache_topic),
    )
    assert estimate.model_calls == real.model_calls == MESSAGES
    assert abs(estimate.tokens - real.tokens) <= 0.05 * real.tokens, (estimate.tokens, real.tokens)

    calls_mid = await model_calls(fake)
    assert calls_mid - calls_before == MESSAGES
    again = await run_replay(
        settings,
        ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.e2", cache_topic=cache_topic),
    )
    assert await model_calls(fake) == calls_mid, "a second identical replay calls no model"
    assert again.cost_usd == 0.0 and again.model_calls == 0
    assert again.cache_hits == again.verdicts == MESSAGES


async def test_max_cost_stops_before_the_budget_and_says_where(
    kafka_bootstrap: str, fake: str
) -> None:
    run = await labelled_run(kafka_bootstrap, fake)
    budget = 0.01  # about a sixth of what the whole topic costs
    result = await run_replay(
        run.settings(),
        ReplayRequest(topic=run.input_topic, to_topic=f"{run.name}.b", max_cost=budget),
    )
    assert 0 < result.cost_usd <= budget
    assert result.stopped_at, "a budget stop names where it stopped"
    assert result.verdicts < MESSAGES
