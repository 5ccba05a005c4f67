"""The eval metrics, checked against scikit-learn and numpy on random fixtures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from consumer.tools.evaluate import binary_scores, cohen_kappa, label_categories, percentile

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
