"""Two watches over the provider's failures: poison or outage, and bad content or misconfiguration.

Both answer one question a single failure cannot: is it this message, or everything? They hold
what that takes (counts, signatures, the breaker's totals) and decide; the retry layer
(:mod:`consumer.model.calls`) and the Classifier act on the decision.

**Poison or outage** (:class:`PoisonWatch`). In one
:meth:`~consumer.model.calls.ModelCalls.with_retries` (one chat request, one first-tier call, one
batch call, with its retries), a ``ProviderUnavailable`` failure counts towards ``poison_attempts``
only if, right after it, the breaker is closed *and* has recorded a success (any message's) since
this call's previous failure; an opening of the breaker during the retries resets the count to zero.
429s never count (rate limits are not poison). So in an outage, when nothing succeeds or the circuit
opens, nothing counts and nothing is dead-lettered, while a message that fails alone, again and
again, among messages that succeed becomes a ``PersistentFailure`` dead letter. A batch that fails
so falls back to single calls, each with a count of its own; a first-tier call that fails so leaves
the decision to the chat model.

**Misconfiguration** (:class:`RejectionWatch`). A 404 is fatal at once. A 400 dead-letters its
message, but each one's signature (status, code, param, provider message:
:func:`consumer.model.provider.rejection_signature`) is remembered with the message's source
offset; when the same signature has been seen for ``misconfig_repeats`` different offsets with
no successful chat call in between (any 200 clears the memory: a parameter the provider rejects
lets nothing through), the service stops with ``ProviderMisconfigured``. The first
``misconfig_repeats - 1`` such messages are already in the dead-letter topic by then (the fatal
message lists them, for a replay once fixed): holding every 400 back until the pattern is clear
would stall the stream on ordinary bad content instead.
"""

from __future__ import annotations

from consumer.errors import (
    PermanentError,
    PersistentFailure,
    ProviderMisconfigured,
    ProviderUnavailable,
)
from consumer.model.circuit import CircuitBreaker
from consumer.model.ledger import Recorder
from consumer.model.provider import Signature, rejection_signature
from schemas import Source

__all__ = ["PoisonWatch", "RejectionWatch"]

#: Distinct 400 signatures remembered at once (the oldest is forgotten first).
_SIGNATURES_KEPT = 64


class PoisonWatch:
    """One call's transient failures, counted towards poison only while others succeed.

    A ``ProviderUnavailable`` failure counts when, right after it, the breaker is closed and
    has recorded a success since this call's previous failure (or since the watch began); an
    opening of the breaker since the previous failure resets the count.
    """

    def __init__(self, breaker: CircuitBreaker, limit: int) -> None:
        self.breaker = breaker
        self.limit = limit
        self.count = 0
        #: This call's last attempt was a half-open probe that failed.
        self.probe_failed = False
        self._successes = breaker.successes
        self._openings = breaker.openings
        #: Failures in a row that could not count (nobody else got an answer between them).
        self.uncounted = 0
        #: No other traffic answers: witness calls tell poison from an outage.
        self.alone = False
        #: Where the usage of witness calls made for this call goes (None: metrics only).
        self.record: Recorder | None = None

    def needs_witness(self) -> bool:
        """As many failures in a row as make poison, yet none could count: nothing else got an
        answer between them, with the circuit closed. Only other traffic (or a witness call)
        can tell poison from an outage now."""
        if self.breaker.is_closed and (self.alone or self.uncounted >= self.limit):
            self.alone = True  # from now on, a witness after every failure
            return True
        return False

    def failed(self, error: ProviderUnavailable) -> PersistentFailure | None:
        """Count ``error``; the dead letter's reason once the count reaches the limit."""
        breaker = self.breaker
        self.uncounted += 1
        if breaker.openings != self._openings:
            self.count = 0  # an outage began during the retries: start again
            self._openings = breaker.openings
        elif breaker.is_closed and breaker.successes > self._successes:
            self.count += 1
            self.uncounted = 0
        self._successes = breaker.successes
        if self.count < self.limit:
            return None
        return PersistentFailure(
            f"{self.count} attempts failed with {error.kind} while other messages succeeded: "
            f"treating this message as poison; last error: {error.message}"
        )


class RejectionWatch:
    """The same 400 for many different messages, with no chat success between: misconfigured."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self._seen: dict[Signature, dict[tuple[str, int, int], None]] = {}

    def success(self) -> None:
        """A chat request was accepted: the rejections so far were about their messages."""
        self._seen.clear()

    def rejected(
        self, error: PermanentError, source: Source, where: str
    ) -> ProviderMisconfigured | None:
        """Remember ``error`` for ``source``; the fatal error once the pattern is clear."""
        signature = rejection_signature(error)
        if signature is None:
            return None
        offsets = self._seen.pop(signature, {})
        self._seen[signature] = offsets  # most recent last
        offsets[(source.topic, source.partition, source.offset)] = None
        while len(self._seen) > _SIGNATURES_KEPT:
            del self._seen[next(iter(self._seen))]
        if len(offsets) < self.repeats:
            return None
        earlier = [f"{t}/{p}@{o}" for t, p, o in list(offsets)[:-1]]
        dead = (
            f" The earlier ones went to the dead-letter topic ({', '.join(earlier)}): replay "
            "them once the configuration is fixed."
            if earlier
            else ""
        )
        return ProviderMisconfigured(
            f"the provider rejected {len(offsets)} different messages with the same error: "
            f"{error.message} (code={signature.code}, param={signature.param}). This is a "
            f"configuration problem (the model parameters sent to {where}: see the parameter "
            "table in the README's Providers section; MODSTREAM_MODEL_FAMILY, "
            "MODSTREAM_TOKEN_LIMIT_PARAM, MODSTREAM_REASONING_EFFORT, MODSTREAM_MAX_TOKENS, "
            "MODSTREAM_TEMPERATURE, MODSTREAM_RESPONSE_FORMAT), not bad content." + dead
        )
