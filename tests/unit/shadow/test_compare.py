"""compare: a shadow verdict against production's."""

from __future__ import annotations

from consumer.pipeline.admit import Admitted
from consumer.shadow.compare import compare
from schemas import ModerationRequest, Source, Verdict
from tests.unit.kafka_fakes import POLICY, verdict_for

SOURCE = Source(topic="in", partition=0, offset=3)


def verdict(**scores: float) -> Verdict:
    request = ModerationRequest(id="m3", text="hello")
    return verdict_for(Admitted(request, "hello", None, False, 1), SOURCE, POLICY, **scores)


def test_the_same_verdict_agrees_and_flips_nothing() -> None:
    seen = compare(verdict(violence=0.9), verdict(violence=0.9))
    assert (seen.agrees, seen.flagged, seen.unflagged) == (True, (), ())


def test_categories_that_flip_each_way_are_named() -> None:
    production = verdict(violence=0.95, hate=0.0)
    candidate = verdict(violence=0.0, hate=0.95, harassment=0.95)
    seen = compare(production, candidate)
    assert seen.flagged == ("harassment", "hate")
    assert seen.unflagged == ("violence",)


def test_an_action_change_is_a_disagreement() -> None:
    production = verdict()
    candidate = verdict(violence=0.99)
    assert production.action is not candidate.action
    assert not compare(production, candidate).agrees


def test_a_category_only_one_policy_has_counts_as_not_flagged_in_the_other() -> None:
    production = verdict(violence=0.99)
    candidate = production.model_copy(update={"categories": {}})
    assert compare(production, candidate).unflagged == ("violence",)
