"""Stages: one input record through decode, admit, classify and delivery, or into a dead letter.

    decode -> admit -> classify -> publish (serialize) -> deliver

Each stage takes a typed value and hands one on. A ``PermanentError`` (bytes that are not a
request, content over the hard limit, a model that never gave a usable answer) turns the input
into a dead letter of the stage that gave up, carrying its bytes and reason; so does an output
Kafka can never take (``PublishRejected``: too large, invalid), the dead letter cut to fit the
dead-letter topic. A dead letter even that topic refuses stops the service: going on would lose
the input.

With tracing on (:mod:`consumer.ops.tracing`) each record runs in its span, parented by its
``traceparent``: classify and publish are wrapped once, at construction, in spans of their own
(classify's holding one span per model call; publish's is the context the outputs' headers
carry on). Off, nothing is wrapped: a record costs one check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog
from opentelemetry.trace import SpanKind

from consumer.errors import BrokerRejected, PermanentError, PublishRejected
from consumer.kafka.registry import SchemaRegistry
from consumer.model.classify import Classified
from consumer.ops.metrics import Metrics
from consumer.ops.tracing import OFF, Tracing
from consumer.pipeline.admit import Admitted, Admitter, admit_off_loop
from consumer.pipeline.dead_letter import Stage, dead_letter
from consumer.pipeline.decode import decode_record
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.publish import Publisher
from consumer.pipeline.source import Envelope
from consumer.settings import Settings
from consumer.shadow.runner import Shadow
from schemas import DeadLetter, Source, UsageEvent, Verdict, make_event_id

__all__ = ["Classify", "Stages"]

log = structlog.get_logger(__name__)

#: The classify stage: the classifier's ``classify``, or the micro-batcher's, chosen by
#: :mod:`consumer.app`. Each message gets its own result, delivered and marked done alone.
Classify = Callable[[Admitted, Source], Awaitable[Classified]]


class Stages:
    """Runs one input through every stage; returns once its outputs are delivered."""

    def __init__(
        self,
        settings: Settings,
        *,
        admitter: Admitter,
        classify: Classify,
        publisher: Publisher,
        delivery: Delivery,
        metrics: Metrics,
        policy_version: str,
        dead_letter_max_bytes: int | None = None,
        shadow: Shadow | None = None,
        registry: SchemaRegistry | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.settings = settings
        self.admitter = admitter
        self.publisher = publisher  # serializes (and size-checks) the outputs
        self.delivery = delivery
        self.metrics = metrics
        self.policy_version = policy_version
        self.dead_letter_max_bytes = dead_letter_max_bytes  # the dead-letter topic's limit
        self.shadow = shadow  # the candidate's second opinion, offered each delivered verdict
        self.registry = registry  # decodes avro, protobuf and json_schema input
        self.tracing = tracing
        # Wrapped once here, not checked per message: tracing off leaves them as they are.
        self.classify = tracing.classify(classify)
        self.publish = tracing.wrap("publish", self._publish, kind=SpanKind.PRODUCER)

    async def run(self, envelope: Envelope) -> None:
        """One input to a delivered verdict or dead letter; its lines carry its coordinates."""
        event_id = make_event_id(envelope.source, self.policy_version, "verdict")
        with structlog.contextvars.bound_contextvars(
            partition=envelope.partition, offset=envelope.offset, event_id=event_id
        ):
            if not self.tracing.enabled:
                await self._stages(envelope)
                return
            with self.tracing.record(envelope, event_id):
                await self._stages(envelope)

    async def _stages(self, envelope: Envelope) -> None:
        settings = self.settings
        stage: Stage = "decode"
        try:
            request = await decode_record(
                envelope,
                input_format=settings.input_format,
                max_message_bytes=settings.max_message_bytes,
                registry=self.registry,
            )
            stage = "admit"
            admitted = await admit_off_loop(self.admitter, request)
            log.debug("classifying", content=admitted.text, tokens=admitted.content_tokens)
        except PermanentError as exc:
            await self._dead_letter(envelope, exc, stage, attempts=0)
            return
        result = await self.classify(admitted, envelope.source)
        if result.failure is not None:
            await self._dead_letter(
                envelope, result.failure, "classify", result.attempts, result.usage
            )
            return
        try:
            await self.publish(envelope, verdict=result.verdict, usage=result.usage)
        except PublishRejected as exc:
            await self._dead_letter(envelope, exc, "publish", result.attempts, result.usage)
            return
        self.metrics.verdict()
        if self.shadow is not None and result.verdict is not None:
            # After delivery: the candidate neither delays nor holds back this message.
            self.shadow.offer(envelope, request, result.verdict)

    async def _publish(
        self,
        envelope: Envelope,
        *,
        verdict: Verdict | None = None,
        usage: Sequence[UsageEvent] = (),
        dead: DeadLetter | None = None,
    ) -> None:
        """The input's outputs serialized (size-checked) and delivered."""
        records = self.publisher.records(envelope, verdict=verdict, usage=usage, dead=dead)
        await self.delivery.deliver(envelope, records)

    async def _dead_letter(
        self,
        envelope: Envelope,
        error: PermanentError,
        stage: Stage,
        attempts: int,
        usage: list[UsageEvent] | None = None,
    ) -> None:
        dead = dead_letter(
            envelope,
            error,
            stage=stage,
            policy_version=self.policy_version,
            attempts=attempts,
            redact=self.settings.redact_dead_letters,
            max_bytes=None
            if self.dead_letter_max_bytes is None
            else self.dead_letter_max_bytes - len(envelope.key or b""),
        )
        log.info(
            "dead letter",
            stage=stage,
            reason=error.kind,
            detail=error.message[:200],
            payload_truncated=dead.payload_truncated or None,
        )
        self.tracing.note(error=f"dead letter: {error.kind}", dead_letter=stage, reason=error.kind)
        try:
            await self.publish(envelope, dead=dead, usage=usage or ())
        except PublishRejected as exc:
            # Cut to fit, a dead letter is refused only when something is badly wrong with the
            # dead-letter topic; going on would lose the input.
            raise BrokerRejected(
                f"the dead-letter topic {self.settings.dlq_topic!r} refused a dead letter: "
                f"{exc.message}"
            ) from exc
        self.metrics.dead_letter(stage, error.kind)
