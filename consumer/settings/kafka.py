"""The Kafka fields of :class:`consumer.settings.Settings`: the cluster, its security, the
topics, the group, and the delivery and ordering guarantees."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from consumer.settings.choices import Delivery, Ordering


class KafkaSettings(BaseModel):
    """Where records come from and go to, and what is promised about them."""

    kafka_bootstrap_servers: str = "localhost:9092"
    input_topic: str = "moderation.requests"
    verdict_topic: str = "moderation.verdicts"
    usage_topic: str = "moderation.usage"
    dlq_topic: str = "moderation.dead-letters"
    group_id: str = "modstream"
    client_id: str = "modstream"
    auto_offset_reset: str = Field(default="earliest", pattern="^(earliest|latest)$")
    security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    sasl_mechanism: str | None = Field(
        default=None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted MODSTREAM_SSL_KEYFILE; a secret."
    )
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    transactional_id: str | None = Field(
        default=None,
        description="exactly_once: the producer's transactional id; keep it stable per "
        "instance (e.g. the pod name) so a restart fences its crashed predecessor. "
        "Default: <group_id>-<hostname>.",
    )
    carry_headers: str = Field(
        default="",
        description="Comma-separated names of input record headers copied onto the verdict, "
        "usage and dead-letter records (traceparent and tracestate always are); never over "
        "modstream's own content-type, modstream-schema and modstream-event-id.",
    )
    ordering: Ordering = Field(
        default=Ordering.UNORDERED,
        description="unordered, key (same key in offset order) or partition.",
    )

    @property
    def carried_headers(self) -> tuple[str, ...]:
        """The header names of ``carry_headers``, blanks dropped."""
        return tuple(name.strip() for name in self.carry_headers.split(",") if name.strip())

    @property
    def effective_transactional_id(self) -> str:
        """The transactional id exactly-once mode uses."""
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}"
