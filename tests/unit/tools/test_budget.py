"""CostBudget: the --max-cost rule, by example and by property (a hypothesis state machine).

The invariants, for any order of reservations and settlements in which no message costs more
than it reserved:

- what is spent plus what is reserved never passes the limit;
- a reservation is refused for good (``SPENT``) only when none is held, so a replay never waits
  for a settlement that cannot come; it waits (``WAIT``) only while one is held;
- with none held, a reservation fits exactly when what is spent plus it is within the limit;
- a refused reservation changes nothing; ``held`` counts the reservations not yet settled.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from consumer.tools.budget import CostBudget, Grant

EPSILON = 1e-9


def test_no_limit_grants_everything() -> None:
    budget = CostBudget(None)
    assert all(budget.reserve(1e6) is Grant.GRANTED for _ in range(10))
    assert budget.held == 10


def test_a_reservation_waits_while_another_may_make_room_then_fits() -> None:
    budget = CostBudget(1.0)
    assert budget.reserve(0.6) is Grant.GRANTED
    assert budget.reserve(0.6) is Grant.WAIT  # the first may cost less than it reserved
    budget.settle(0.6, 0.1)
    assert budget.reserve(0.6) is Grant.GRANTED
    assert budget.spent == pytest.approx(0.1)


def test_with_nothing_held_a_reservation_that_does_not_fit_means_spent() -> None:
    budget = CostBudget(1.0)
    assert budget.reserve(0.5) is Grant.GRANTED
    budget.settle(0.5, 0.5)
    assert budget.reserve(0.6) is Grant.SPENT
    assert budget.reserve(0.5) is Grant.GRANTED  # what fits still fits


def test_reserved_returns_to_exactly_zero_when_nothing_is_held() -> None:
    budget = CostBudget(10.0)
    amounts = [0.1, 0.2, 0.7, 1e-17]
    for amount in amounts:
        budget.reserve(amount)
    for amount in amounts:
        budget.settle(amount, 0.0)
    assert budget.reserved == 0.0 and budget.held == 0


def test_settle_without_a_reservation_is_a_bug() -> None:
    with pytest.raises(ValueError, match="without a reservation"):
        CostBudget(1.0).settle(0.1, 0.1)


amounts = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)


class Budgeting(RuleBasedStateMachine):
    """Reservations and settlements in any order; settled costs never above what was reserved."""

    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.budget = CostBudget(None)
        self.outstanding: list[float] = []
        self.limit = math.inf

    @rule(limit=st.floats(min_value=0.0, max_value=5.0, allow_nan=False))
    @precondition(lambda self: self.limit == math.inf and not self.outstanding)
    def start_over_with(self, limit: float) -> None:
        self.budget = CostBudget(limit)
        self.limit = limit

    @rule(target=reservations, amount=amounts)
    def reserve(self, amount: float) -> float:
        before = (self.budget.spent, self.budget.reserved, self.budget.held)
        fits = self.budget.spent + self.budget.reserved + amount <= self.limit
        grant = self.budget.reserve(amount)
        if grant is Grant.GRANTED:
            assert fits
            self.outstanding.append(amount)
            return amount
        assert not fits
        assert (self.budget.spent, self.budget.reserved, self.budget.held) == before
        assert grant is (Grant.SPENT if not self.outstanding else Grant.WAIT)
        return math.nan  # nothing held: settling it is skipped

    @rule(amount=consumes(reservations), share=st.floats(min_value=0.0, max_value=1.0))
    def settle(self, amount: float, share: float) -> None:
        if math.isnan(amount) or amount not in self.outstanding:
            return
        self.outstanding.remove(amount)
        self.budget.settle(amount, amount * share)

    @invariant()
    def within_the_limit(self) -> None:
        assert self.budget.spent + self.budget.reserved <= self.limit + EPSILON

    @invariant()
    def held_counts_what_is_outstanding(self) -> None:
        assert self.budget.held == len(self.outstanding)
        assert self.budget.reserved == pytest.approx(sum(self.outstanding), abs=EPSILON)

    @invariant()
    def with_nothing_held_the_rule_is_plain(self) -> None:
        if self.outstanding or self.limit == math.inf:
            return
        spent = self.budget.spent
        for amount in (0.0, (self.limit - spent) / 2, self.limit - spent + 0.01):
            probe = CostBudget(self.limit)
            probe.spent = spent
            fits = spent + amount <= self.limit
            assert probe.reserve(amount) is (Grant.GRANTED if fits else Grant.SPENT)


TestBudgeting = Budgeting.TestCase
