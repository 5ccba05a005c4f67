"""A Batch API replay's input file: one chat request per input, its custom id, the batch's key.

Each line is OpenAI's ``{custom_id, method: "POST", url: "/v1/chat/completions", body}``, the
``body`` exactly what the synchronous chat call would post for the input
(:meth:`consumer.model.classify.Classifier.request_body`: model, messages from the prompt
builder, ``response_format``, the budget's name, reasoning parameters), so a batch verdict is
the answer to the same question.

The custom id says where the input is: ``p<partition>-o<offset>`` (the topic is one per
replay). The output comes back in any order, so the results are matched by it
(:mod:`consumer.tools.batch_results`), never by position.

The batch's key (:func:`batch_key`) is a hash of the topic and the file's bytes: the same
range, model, prompt, policy and request parameters give the same file, so a replay run
again finds the batch it submitted (its ``metadata``) instead of paying for a second one.
Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import orjson

__all__ = [
    "BATCH_ENDPOINT",
    "KEY_FIELD",
    "MAX_LINES",
    "batch_key",
    "batch_metadata",
    "custom_id",
    "jsonl",
    "parse_custom_id",
    "request_line",
]

#: The endpoint every line of a replay's batch goes to.
BATCH_ENDPOINT: Final[Literal["/v1/chat/completions"]] = "/v1/chat/completions"

#: Requests one batch may hold at OpenAI (a larger range is refused before any upload).
MAX_LINES = 50_000

#: The metadata field holding a batch's key (what a resumed replay looks for).
KEY_FIELD = "modstream_key"

#: OpenAI's limit on one metadata value, in characters.
_METADATA_VALUE_MAX = 512

_CUSTOM_ID = re.compile(r"p(0|[1-9][0-9]*)-o(0|[1-9][0-9]*)")


def custom_id(partition: int, offset: int) -> str:
    """The custom id of the input at ``partition``, ``offset`` (both >= 0)."""
    if partition < 0 or offset < 0:
        raise ValueError(f"no custom id for partition {partition}, offset {offset}")
    return f"p{partition}-o{offset}"


def parse_custom_id(text: str) -> tuple[int, int]:
    """(partition, offset) of a custom id made by :func:`custom_id`; ``ValueError`` otherwise
    (a line that is not ours)."""
    found = _CUSTOM_ID.fullmatch(text)
    if found is None:
        raise ValueError(f"not a replay's custom id: {text!r}")
    return int(found[1]), int(found[2])


def request_line(cid: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the input file."""
    return {"custom_id": cid, "method": "POST", "url": BATCH_ENDPOINT, "body": dict(body)}


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """The input file: one JSON object per line, serialized the same way every run (the key
    hashes these bytes)."""
    return b"".join(orjson.dumps(dict(line)) + b"\n" for line in lines)


def batch_key(topic: str, content: bytes) -> str:
    """The key a replay's batch is found by: the topic and what the batch asks."""
    digest = hashlib.sha256(topic.encode() + b"\x00" + content)
    return digest.hexdigest()[:32]


def batch_metadata(key: str, **about: str) -> dict[str, str]:
    """The batch's ``metadata``: its key, then what a person listing batches needs to know what
    it is (``about``: topic, range, model, versions), each value cut to OpenAI's limit."""
    return {KEY_FIELD: key} | {name: value[:_METADATA_VALUE_MAX] for name, value in about.items()}
