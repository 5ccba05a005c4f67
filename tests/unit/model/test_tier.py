"""Tiering: the band decision (a property), the policy section, and the Classifier's first pass
through the moderations endpoint against a scripted provider (``httpx2.MockTransport``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
import yaml
from hypothesis import given
from hypothesis import strategies as st
from openai import AsyncOpenAI
from pydantic import ValidationError

from consumer.errors import ConfigError, ProviderAuthError
from consumer.model.classify import Classifier
from consumer.model.cost import PriceTable
from consumer.model.ledger import MODERATION_PRICE_SOURCE
from consumer.model.limit import Limiter
from consumer.model.policy import FirstTier, Policy, PromptBuilder, load_policy
from consumer.model.request_params import choose, server_kind
from consumer.ops.metrics import Metrics
from schemas import Action, UsageOutcome
from tests.unit.model.test_classify import (
    MODEL,
    POLICY,
    PROMPT,
    SOURCE,
    Answer,
    Provider,
    admitted,
    ok,
    reply_text,
    status,
)

pytestmark = pytest.mark.timeout(60)

MOD_MODEL = "omni-moderation-latest"
BAND = (0.08, 0.95)
TIERED = POLICY.model_copy(
    update={"first_tier": FirstTier(model=MOD_MODEL, uncertain_band=BAND), "version": "tiered"}
)
BUILDER = PromptBuilder(TIERED, PROMPT)
#: The moderations endpoint's (slash) names, as the API answers them.
ENDPOINT_CATEGORIES = [c.name for c in POLICY.categories]


# ---- the band decision ---------------------------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(band=st.tuples(unit, unit).map(sorted), scores=st.lists(unit, max_size=15))
def test_first_tier_decides_iff_no_score_is_inside_the_band(
    band: list[float], scores: list[float]
) -> None:
    low, high = band
    tier = FirstTier(uncertain_band=(low, high))
    named = {f"c{i}": s for i, s in enumerate(scores)}
    inside = [s for s in scores if low <= s < high]
    assert tier.decides(named) == (not inside)
    # The same, said the way the policy docs say it.
    assert tier.decides(named) == all(s < low or s >= high for s in scores)


@pytest.mark.parametrize(
    ("scores", "decides"),
    [
        ([0.01, 0.079], True),  # all below the low end
        ([0.08, 0.01], False),  # the low end is inside
        ([0.5], False),
        ([0.949], False),
        ([0.95, 0.01], True),  # at the high end, nothing inside
        ([0.99, 0.12], False),  # a confident score does not outvote an uncertain one
    ],
)
def test_band_edges(scores: list[float], decides: bool) -> None:
    tier = FirstTier(uncertain_band=BAND)
    assert tier.decides({str(i): s for i, s in enumerate(scores)}) is decides


@pytest.mark.parametrize("band", [(0.9, 0.1), (-0.1, 0.5), (0.2, 1.5)])
def test_bad_band_is_rejected(band: tuple[float, float]) -> None:
    with pytest.raises(ValidationError):
        FirstTier(uncertain_band=band)


def test_policy_file_with_first_tier(tmp_path: Path) -> None:
    data = yaml.safe_load(Path("consumer/data/policy.default.yaml").read_text())
    data["first_tier"] = {"model": MOD_MODEL, "uncertain_band": [0.2, 0.8]}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    policy = load_policy(path)
    assert policy.first_tier == FirstTier(model=MOD_MODEL, uncertain_band=(0.2, 0.8))
    assert load_policy().first_tier is None  # off unless the policy asks for it
    data["first_tier"] = {"uncertain_band": [0.8, 0.2]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="uncertain_band"):
        load_policy(path)


# ---- the classifier's first pass -----------------------------------------------------------


def moderation(**scores: float) -> httpx2.Response:
    """A moderations reply: every endpoint category 0.01 unless given (underscored names)."""
    by_name = {name: 0.01 for name in ENDPOINT_CATEGORIES}
    for key, value in scores.items():
        name = next(n for n in ENDPOINT_CATEGORIES if n.replace("/", "_").replace("-", "_") == key)
        by_name[name] = value
    result = {
        "flagged": any(v >= 0.5 for v in by_name.values()),
        "categories": {n: v >= 0.5 for n, v in by_name.items()},
        "category_scores": by_name,
        "category_applied_input_types": {n: ["text"] for n in by_name},
    }
    return httpx2.Response(200, json={"id": "modr-1", "model": MOD_MODEL, "results": [result]})


MakeTiered = Callable[..., tuple[Classifier, Provider, list[str]]]


@pytest_asyncio.fixture
async def make(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MakeTiered]:
    real_sleep = asyncio.sleep

    async def only_yield(delay: float, result: Any = None) -> Any:  # backoff costs no time
        await real_sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", only_yield)
    clients: list[httpx2.AsyncClient] = []

    def build(
        *script: Answer, builder: PromptBuilder = BUILDER, metrics: Metrics | None = None
    ) -> tuple[Classifier, Provider, list[str]]:
        provider = Provider(list(script))
        paths: list[str] = []

        def answer(request: httpx2.Request) -> httpx2.Response:
            paths.append(request.url.path)
            return provider(request)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
        clients.append(http)
        client = AsyncOpenAI(
            base_url="http://test/v1", api_key="k", max_retries=0, http_client=http
        )
        classifier = Classifier(
            client,
            model=MODEL,
            params=choose(MODEL, server_kind(client.base_url), max_tokens=200, temperature=0.0),
            builder=builder,
            limiter=Limiter(4),
            prices=PriceTable(),
            max_backoff_s=0.01,
            metrics=metrics,
        )
        return classifier, provider, paths

    yield build
    for http in clients:
        await http.aclose()


async def test_clean_text_is_decided_by_the_first_tier_alone(make: MakeTiered) -> None:
    classifier, provider, paths = make(moderation())
    result = await classifier.classify(admitted("have a nice day"), SOURCE)
    assert paths == ["/v1/moderations"]  # no chat call
    assert provider.bodies[0] == {"model": MOD_MODEL, "input": "have a nice day"}
    verdict = result.verdict
    assert verdict is not None
    assert verdict.action == Action.ALLOW
    assert verdict.model == MOD_MODEL
    assert [t.name for t in verdict.tiers] == ["moderation"]
    assert verdict.tiers[0].model == MOD_MODEL
    assert verdict.tiers[0].scores == {c.name: 0.01 for c in POLICY.categories}
    assert "first tier" in verdict.rationale
    [usage] = result.usage
    assert usage.model == MOD_MODEL
    assert usage.outcome == UsageOutcome.OK
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd) == (0, 0, 0.0)
    assert usage.price_source == MODERATION_PRICE_SOURCE


async def test_confident_harm_is_decided_by_the_policy_on_the_first_tier_scores(
    make: MakeTiered,
) -> None:
    # violence 0.97 at/above the high end and nothing inside the band: the tier decides, and
    # the policy (not the endpoint's own "flagged") turns the scores into the action.
    classifier, _, paths = make(moderation(violence=0.97, violence_graphic=0.96))
    result = await classifier.classify(admitted("a violent text"), SOURCE)
    assert paths == ["/v1/moderations"]
    verdict = result.verdict
    assert verdict is not None
    assert verdict.action == Action.BLOCK  # violence/graphic: threshold 0.5, block
    assert verdict.categories["violence/graphic"].score == 0.96
    assert verdict.categories["violence/graphic"].flagged
    scores = verdict.tiers[0].scores
    flagged, action, categories = TIERED.decide(scores)
    assert (verdict.flagged, verdict.action, verdict.categories) == (flagged, action, categories)


async def test_a_score_inside_the_band_asks_the_chat_model(make: MakeTiered) -> None:
    classifier, provider, paths = make(
        moderation(violence=0.97, violence_graphic=0.12), ok(reply_text(violence=0.7))
    )
    result = await classifier.classify(admitted("a violent text"), SOURCE)
    assert paths == ["/v1/moderations", "/v1/chat/completions"]
    verdict = result.verdict
    assert verdict is not None
    assert verdict.model == MODEL  # the chat model's scores decided
    assert verdict.categories["violence"].score == 0.7
    assert verdict.categories["violence/graphic"].score == 0.0
    assert [t.name for t in verdict.tiers] == ["moderation", "chat"]
    assert verdict.tiers[0].scores["violence/graphic"] == 0.12  # the slash name maps
    assert verdict.tiers[1].scores["violence"] == 0.7
    assert [u.model for u in result.usage] == [MOD_MODEL, MODEL]
    assert len({u.event_id for u in result.usage}) == 2
    assert provider.bodies[1]["model"] == MODEL


async def test_categories_the_endpoint_does_not_score_count_zero(make: MakeTiered) -> None:
    policy = Policy(
        version="custom",
        categories=(
            {
                "name": "spam",
                "description": "Unsolicited ads.",
                "threshold": 0.5,
                "action": "review",
            },
            {"name": "hate", "description": "Hate.", "threshold": 0.5, "action": "block"},
        ),
        first_tier=FirstTier(uncertain_band=(0.2, 0.8)),
    )
    classifier, _, paths = make(moderation(hate=0.9), builder=PromptBuilder(policy, PROMPT))
    result = await classifier.classify(admitted("text"), SOURCE)
    assert paths == ["/v1/moderations"]
    assert result.verdict is not None
    assert result.verdict.tiers[0].scores == {"spam": 0.0, "hate": 0.9}
    assert result.verdict.action == Action.BLOCK


async def test_moderation_call_is_retried_through_the_same_layer(make: MakeTiered) -> None:
    metrics = Metrics()
    classifier, _, paths = make(status(429), status(503), moderation(), metrics=metrics)
    result = await classifier.classify(admitted(), SOURCE)
    assert paths == ["/v1/moderations"] * 3
    assert [u.outcome for u in result.usage] == [
        UsageOutcome.RATE_LIMITED,
        UsageOutcome.PROVIDER_UNAVAILABLE,
        UsageOutcome.OK,
    ]
    assert all(u.cost_usd == 0.0 and u.model == MOD_MODEL for u in result.usage)
    assert classifier.limiter.concurrency.limit < 4  # the 429 cut the concurrency like chat's
    calls = metrics.registry.get_sample_value(
        "modstream_model_calls_total", {"model": MOD_MODEL, "outcome": "ok"}
    )
    assert calls == 1


async def test_moderation_failures_count_towards_the_circuit(make: MakeTiered) -> None:
    classifier, _, _ = make(*([status(500)] * 2), moderation())
    seen: list[str] = []
    failure, success = classifier.breaker.failure, classifier.breaker.success

    def on_failure(caller: object | None = None, **cause: Any) -> None:
        seen.append("failure")
        failure(caller, **cause)

    def on_success() -> None:
        seen.append("success")
        success()

    classifier.breaker.failure = on_failure  # type: ignore[method-assign]
    classifier.breaker.success = on_success  # type: ignore[method-assign]
    await classifier.classify(admitted(), SOURCE)
    assert seen == ["failure", "failure", "success"]


async def test_rejected_moderation_request_falls_back_to_the_chat_model(
    make: MakeTiered,
) -> None:
    classifier, _, paths = make(status(400), ok(reply_text(hate=0.9)))
    result = await classifier.classify(admitted(), SOURCE)
    assert paths == ["/v1/moderations", "/v1/chat/completions"]
    assert result.verdict is not None
    assert result.verdict.action == Action.BLOCK
    assert [t.name for t in result.verdict.tiers] == ["chat"]
    assert [u.outcome for u in result.usage] == [UsageOutcome.REJECTED, UsageOutcome.OK]


async def test_auth_failure_on_the_moderation_call_is_fatal(make: MakeTiered) -> None:
    classifier, _, _ = make(status(401))
    with pytest.raises(ProviderAuthError):
        await classifier.classify(admitted(), SOURCE)


async def test_chat_refusal_after_the_first_tier_records_both_tiers(make: MakeTiered) -> None:
    classifier, _, _ = make(moderation(hate=0.5), ok(refusal="no"))
    result = await classifier.classify(admitted(), SOURCE)
    assert result.verdict is not None
    assert result.verdict.refusal == "no"
    assert [(t.name, t.scores) for t in result.verdict.tiers][1] == ("chat", {})


async def test_without_a_first_tier_nothing_changes(make: MakeTiered) -> None:
    classifier, _, paths = make(ok(), builder=PromptBuilder(POLICY, PROMPT))
    result = await classifier.classify(admitted(), SOURCE)
    assert paths == ["/v1/chat/completions"]
    assert result.verdict is not None
    assert result.verdict.tiers == []
