"""The cost budget of a replay (``--max-cost``): reserve a message's worst case, settle its cost.

A replay classifies many messages at once, and a message's cost is known only once its calls are
done. So before calling the model, each message reserves the most it may cost; when it is done,
the reservation is replaced by what it did cost. A reservation is granted only while what is
spent plus what is reserved stays within the limit, so as long as no message costs more than it
reserved, the replay never spends more than the limit. When a reservation does not fit, it
waits while other reservations are held (one of them may cost less than reserved and make
room); with none held, nothing can make room: the budget is spent and the replay stops there.

A pure class: amounts in, decisions out, no clock, no I/O, no waiting. The replay
(:class:`consumer.tools.replay.Replayer`) does the waiting, on a condition it notifies after
every settlement.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["CostBudget", "Grant"]


class Grant(Enum):
    """The answer to a reservation."""

    #: Reserved: the message may call the model.
    GRANTED = "granted"
    #: Does not fit now, but reservations are held: ask again after one is settled.
    WAIT = "wait"
    #: Does not fit, and nothing held can make room: the budget is spent.
    SPENT = "spent"


class CostBudget:
    """Spending in USD against an optional limit (None: no limit, every reservation fits)."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        #: USD the settled messages cost.
        self.spent = 0.0
        #: USD reserved by the messages in flight.
        self.reserved = 0.0
        #: Reservations held (a count: float sums never return to exactly 0).
        self.held = 0

    def reserve(self, amount: float) -> Grant:
        """Reserve ``amount`` for one message, if it fits."""
        if self.limit is not None and self.spent + self.reserved + amount > self.limit:
            return Grant.SPENT if self.held == 0 else Grant.WAIT
        self.reserved += amount
        self.held += 1
        return Grant.GRANTED

    def settle(self, amount: float, cost: float) -> None:
        """A message that reserved ``amount`` is done and cost ``cost`` (0.0 if it failed
        before any call)."""
        if self.held <= 0:
            raise ValueError("settle() without a reservation held")
        self.held -= 1
        self.reserved = 0.0 if self.held == 0 else self.reserved - amount
        self.spent += cost
