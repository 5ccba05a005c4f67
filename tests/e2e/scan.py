"""Read every byte a run wrote to Kafka (keys, values, headers), to scan it for secrets."""

from __future__ import annotations

import base64

from consumer.kafka.client import kafka_options
from consumer.kafka.ranges import read_topics
from consumer.settings import Settings


async def raw_bytes(settings: Settings, topics: list[str]) -> bytes:
    """Keys, values and headers of every record of ``topics``, concatenated.

    Base64 payloads (dead letters carry the input that way) are scanned decoded too, so a
    secret cannot hide behind an encoding: callers search the result for the plain secret.
    """
    chunks: list[bytes] = []
    async for r in read_topics(kafka_options(settings), topics, isolation_level="read_uncommitted"):
        chunks.extend([r.key or b"", r.value or b""])
        for key, value in r.headers:
            chunks.extend([key.encode(), value or b""])
    blob = b"\n".join(chunks)
    return blob + b"\n" + _decoded_base64(blob)


def _decoded_base64(blob: bytes) -> bytes:
    """Every quoted JSON string in ``blob`` that is valid base64, decoded."""
    out = []
    for part in blob.split(b'"'):
        if len(part) >= 8 and len(part) % 4 == 0:
            try:
                out.append(base64.b64decode(part, validate=True))
            except ValueError:
                continue
    return b"\n".join(out)


def secret_forms(secret: str) -> list[bytes]:
    """The secret as it could appear: plain, JSON-escaped is the same for our ASCII secrets,
    and base64 (three alignments, so a substring of a larger encoded value is found too)."""
    raw = secret.encode()
    forms = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0 :]
        forms.append(encoded[: len(encoded) - 4])  # drop the tail that depends on what follows
    return forms
