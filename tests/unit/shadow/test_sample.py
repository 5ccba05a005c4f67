"""sample: the shadow share, decided by content id alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.shadow.sample import in_share

ids = st.text(min_size=1, max_size=64)
shares = st.floats(min_value=0.0, max_value=1.0)


@given(ids, shares)
def test_the_same_id_is_always_in_or_always_out(content_id: str, share: float) -> None:
    assert in_share(content_id, share) == in_share(content_id, share)


@given(ids, shares, shares)
def test_raising_the_share_only_adds_ids(content_id: str, a: float, b: float) -> None:
    low, high = sorted((a, b))
    if in_share(content_id, low):
        assert in_share(content_id, high)


@given(ids)
def test_nothing_at_zero_and_everything_at_one(content_id: str) -> None:
    assert not in_share(content_id, 0.0)
    assert in_share(content_id, 1.0)


def test_the_share_taken_is_close_to_the_share_asked() -> None:
    population = [f"message-{i}" for i in range(20_000)]
    for share in (0.01, 0.2, 0.5, 0.9):
        taken = sum(in_share(i, share) for i in population) / len(population)
        assert abs(taken - share) < 0.015, (share, taken)
