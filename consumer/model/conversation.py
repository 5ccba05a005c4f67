"""One message's conversation with the model: the state its calls, usage and verdict share.

A :class:`Call` is made for each admitted message
(:meth:`consumer.model.classify.Classifier.new_call`) and lives until the message has its verdict or
its permanent failure. The Classifier extends its messages (a repair request) and its completion
budget (a ``length`` stop); the usage ledger (:mod:`consumer.model.ledger`) appends one usage event
per model call made for it; the verdict factory (:mod:`consumer.model.verdicts`) reads the tiers
that ran and when it started. It lives in a module of its own because all three take it, and none of
them owns it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from consumer.model.messages import Message
from consumer.pipeline.admit import Admitted
from schemas import Source, TierScores, UsageEvent

__all__ = ["Call"]


@dataclass(slots=True)
class Call:
    """One message's conversation with the model (and the first tier), across attempts."""

    admitted: Admitted
    source: Source
    messages: list[Message]
    #: The completion budget of the next call (doubled once after a ``length`` stop).
    max_tokens: int
    usage: list[UsageEvent] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    #: The tiers that ran so far, when the policy has a first tier.
    tiers: list[TierScores] = field(default_factory=list)
    #: Category -> the inputs the first tier says it flagged (``text``, ``image:0``...).
    category_inputs: dict[str, list[str]] = field(default_factory=dict)
