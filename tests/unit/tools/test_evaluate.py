"""The eval metrics, checked against scikit-learn and numpy on random fixtures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from consumer.errors import ConfigError
from consumer.tools.evaluate import (
    binary_scores,
    check_label_field,
    cohen_kappa,
    evaluate_run,
    label_categories,
    latest_per_input,
    percentile,
    summary_rows,
)
from schemas import Action, Source, UsageEvent, Verdict

pairs = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=200)


@given(pairs)
@settings(max_examples=200)
def test_binary_scores_match_sklearn(rows: list[tuple[bool, bool]]) -> None:
    truth = [t for t, _ in rows]
    predicted = [p for _, p in rows]
    ours = binary_scores(truth, predicted)
    p, r, f, _ = precision_recall_fscore_support(
        truth, predicted, average="binary", pos_label=True, zero_division=0.0
    )
    assert ours.precision == pytest.approx(p)
    assert ours.recall == pytest.approx(r)
    assert ours.f1 == pytest.approx(f)
    assert ours.support == sum(truth)


labels = st.sampled_from(["allow", "review", "block"])


@given(st.lists(st.tuples(labels, labels), min_size=1, max_size=200))
@settings(max_examples=200)
def test_cohen_kappa_matches_sklearn(rows: list[tuple[str, str]]) -> None:
    a = [x for x, _ in rows]
    b = [y for _, y in rows]
    expected = cohen_kappa_score(a, b)
    ours = cohen_kappa(a, b)
    if math.isnan(expected):  # sklearn: both raters used one single label
        assert ours == 1.0
    else:
        assert ours == pytest.approx(expected)


@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=100),
    st.sampled_from([0, 50, 90, 99, 100]),
)
def test_percentile_matches_numpy(values: list[float], q: int) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("clean", set()),
        ("", set()),
        ("harmful:violence", {"violence"}),
        ("violence/graphic", {"violence"}),
        ("Hate, violence", {"hate", "violence"}),
        (None, None),
        (3, None),
    ],
)
def test_label_categories(value: object, expected: set[str] | None) -> None:
    assert label_categories(value) == expected  # type: ignore[arg-type]


def _verdict(offset: int, *, partition: int = 0, label: str = "clean") -> Verdict:
    # Only the fields eval reads; the verdicts' validation is tested with the schemas.
    fields: dict[str, Any] = {
        "source": Source(topic="in", partition=partition, offset=offset),
        "metadata": {"label": label},
        "categories": {},
        "flagged": False,
        "action": Action.ALLOW,
        "cache_hit": False,
        "latency_ms": 10.0,
    }
    return Verdict.model_construct(**fields)


def _usage(event_id: str, cost: float) -> UsageEvent:
    fields: dict[str, Any] = {
        "event_id": event_id,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "cost_usd": cost,
    }
    return UsageEvent.model_construct(**fields)


def test_a_topic_replayed_into_twice_is_scored_once_per_input() -> None:
    first = [_verdict(o, partition=p) for p in (0, 1) for o in range(5)]
    again = [_verdict(o, partition=p, label="violence") for p in (0, 1) for o in range(5)]
    usage = [_usage(f"u{i}", 0.001) for i in range(10)]
    report = evaluate_run("eval.x", first + again, usage + usage, labels="label")
    assert report.verdicts == 10 and report.duplicates == 10
    assert report.labelled == 10  # the last verdict of each input won: all labelled violence
    assert report.flagged is not None and report.flagged.recall == 0.0
    # Ten distinct calls at $0.001 for ten inputs, however often they were re-published.
    assert report.cost_per_1k == pytest.approx(1.0)
    assert ("repeats dropped", ["10"]) in summary_rows([report])


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 20)), max_size=60))
def test_latest_per_input_keeps_exactly_one_per_offset_and_the_last(
    sources: list[tuple[int, int]],
) -> None:
    verdicts = [_verdict(o, partition=p, label=str(i)) for i, (p, o) in enumerate(sources)]
    kept, dropped = latest_per_input(verdicts)
    assert len(kept) == len(set(sources)) and dropped == len(sources) - len(kept)
    last = {(p, o): str(i) for i, (p, o) in enumerate(sources)}
    assert {(v.source.partition, v.source.offset): v.metadata["label"] for v in kept} == last


def test_a_labels_field_no_verdict_carries_is_an_error_naming_the_keys_seen() -> None:
    with pytest.raises(ConfigError, match=r"metadata\['lable'\].*seen: label"):
        check_label_field([_verdict(0)], "lable")
    check_label_field([_verdict(0)], "label")  # present: no error
