"""Tiering end to end: the real broker, the fake model over HTTP, modstream in-process.

The same corpus (80 % clean, 20 % harmful) runs twice against one fake: without a first tier,
then with ``first_tier: {uncertain_band: [0.08, 0.95]}``. The fake's heuristic scores clean
text 0.01-0.05 on every category (all below the band: the first tier decides) and harmful text
0.90+ on its category with 0.10-0.15 on that category's subcategories (inside the band: the chat
model is asked). Chat calls are counted at the fake.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from consumer.app import serve
from consumer.testing.fake_openai.admin import FakeAdmin
from consumer.testing.fake_openai.heuristic import judge
from consumer.tools.sample import CLEAN, HARMFUL
from tests.e2e.harness import Run, assert_nothing_lost, new_run
from tests.fake_server import fake_openai_server

pytestmark = pytest.mark.timeout(300)

BAND = (0.08, 0.95)
MESSAGES = 200
CHAT = "/v1/chat/completions"
MODERATIONS = "/v1/moderations"


def tiered_corpus() -> tuple[list[bytes | None], set[str]]:
    """Every fifth message harmful (20 %), the rest clean; and the harmful ids."""
    values: list[bytes | None] = []
    harmful: set[str] = set()
    for i in range(MESSAGES):
        if i % 5 == 0:
            _, text = HARMFUL[(i // 5) % len(HARMFUL)]
            harmful.add(f"m{i}")
        else:
            text = CLEAN[i % len(CLEAN)]
        values.append(json.dumps({"id": f"m{i}", "text": f"{text} (#{i})"}).encode())
    return values, harmful


def test_the_corpus_falls_where_the_test_needs_it() -> None:
    """Precondition, from the fake's own heuristic: clean all below, harmful inside the band."""
    low, high = BAND
    values, harmful = tiered_corpus()
    for value in values:
        assert value is not None
        request = json.loads(value)
        scores = judge(request["text"]).scores.values()
        if request["id"] in harmful:
            assert any(low <= s < high for s in scores), request["text"]
        else:
            assert all(s < low for s in scores), request["text"]


def tiered_policy(tmp_path: Path) -> Path:
    policy = yaml.safe_load(Path("consumer/data/policy.default.yaml").read_text())
    policy["version"] = "openai-taxonomy-1-tiered"
    policy["first_tier"] = {"model": "omni-moderation-latest", "uncertain_band": list(BAND)}
    path = tmp_path / "policy.tiered.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def run_corpus(
    kafka_bootstrap: str, url: str, **settings: object
) -> tuple[Run, dict[str, int]]:
    """Run the corpus on fresh topics; return the run and the fake's calls by path."""
    async with FakeAdmin(url) as admin:
        await admin.reset()
        run = new_run(kafka_bootstrap, url, partitions=3)
        await run.create_topics()
        values, _ = tiered_corpus()
        await run.produce(values)
        await serve(run.settings(concurrency=16, **settings), exit_when_idle=2)
        calls: dict[str, int] = (await admin.stats())["by_path"]
    return run, calls


async def test_first_tier_cuts_chat_calls_by_the_clean_share(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with fake_openai_server(latency_ms=5, seed=21) as url:
        plain_run, plain = await run_corpus(kafka_bootstrap, url)
        run, tiered = await run_corpus(kafka_bootstrap, url, policy_file=tiered_policy(tmp_path))

    _, harmful = tiered_corpus()
    assert plain.get(CHAT) == MESSAGES  # no faults: one chat call per message
    assert MODERATIONS not in plain
    assert tiered.get(MODERATIONS) == MESSAGES  # the first tier saw every message once
    assert tiered.get(CHAT) == len(harmful) == MESSAGES // 5  # only the uncertain 20 %
    assert 1 - tiered[CHAT] / plain[CHAT] == pytest.approx(0.8)

    await assert_nothing_lost(plain_run)  # exactly one verdict per input, committed to the end
    await assert_nothing_lost(run)
    summary = await run.outputs()
    assert len(summary.verdicts) == MESSAGES
    for verdict in summary.verdicts:
        names = [t.name for t in verdict.tiers]
        moderation = verdict.tiers[0]
        assert moderation.model == "omni-moderation-latest"
        assert set(moderation.scores) == set(verdict.categories)
        if verdict.content_id in harmful:
            assert names == ["moderation", "chat"], verdict.content_id
            assert any(BAND[0] <= s < BAND[1] for s in moderation.scores.values())
            assert verdict.model == run.settings().model
            assert verdict.flagged and verdict.action != "allow"
            chat_scores = verdict.tiers[1].scores
            assert {k: c.score for k, c in verdict.categories.items()} == chat_scores
        else:
            assert names == ["moderation"], verdict.content_id
            assert verdict.model == "omni-moderation-latest"
            assert verdict.action == "allow"
            assert {k: c.score for k, c in verdict.categories.items()} == moderation.scores
    # One usage event per call: every message's moderation call (free), plus the chat calls.
    by_model: dict[str, int] = {}
    for usage in summary.usage:
        by_model[usage.model] = by_model.get(usage.model, 0) + 1
        if usage.model == "omni-moderation-latest":
            assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd) == (0, 0, 0.0)
            assert usage.outcome == "ok"
    assert by_model == {"omni-moderation-latest": MESSAGES, run.settings().model: len(harmful)}
