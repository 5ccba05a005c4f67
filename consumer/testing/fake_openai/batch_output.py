"""What a finished batch writes: its output file (2xx answers), its error file (the rest),
and the usage it reports.

Lines are OpenAI's ``{id, custom_id, response: {status_code, request_id, body}, error}``. A
request the endpoint rejected (a 4xx, or an injected 500) is an error line *with* a response,
its body the error object and ``error`` null, as at OpenAI; ``error`` is set only for a request
never run (``batch_cancelled``), whose ``response`` is null. Neither file keeps the input order.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.testing.fake_openai.reply import new_id


@dataclass(frozen=True, slots=True)
class Result:
    """How one request of a batch was answered."""

    custom_id: str
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        """A 2xx: the line goes to the output file."""
        return 200 <= self.status < 300


def result_lines(
    results: Sequence[Result], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The output lines and the error lines of ``results``, each shuffled by ``rng``."""
    output: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for result in results:
        response = {"status_code": result.status, "request_id": new_id("req"), "body": result.body}
        line = {
            "id": new_id("batch_req"),
            "custom_id": result.custom_id,
            "response": response,
            "error": None,
        }
        (output if result.ok else errors).append(line)
    return shuffled(output, rng), shuffled(errors, rng)


def cancelled_lines(custom_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Error lines for requests a cancelled batch never ran."""
    error = {
        "code": "batch_cancelled",
        "message": "This request was not executed because the batch was cancelled.",
    }
    return [
        {"id": new_id("batch_req"), "custom_id": cid, "response": None, "error": error}
        for cid in custom_ids
    ]


def shuffled(lines: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """``lines`` in another order (two or more lines never keep theirs)."""
    order = lines[:]
    rng.shuffle(order)
    if len(order) > 1 and order == lines:
        # A shuffle may give the input order back; rotate, so a client that relies on the
        # order fails every time instead of now and then.
        order = order[1:] + order[:1]
    return order


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    """Lines as a JSONL file (one JSON object per line, each ending in a newline)."""
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def usage(results: Iterable[Result]) -> dict[str, Any]:
    """A batch's ``BatchUsage``: the sum of its answered chat completions' usage."""
    prompt = completion = cached = thought = 0
    for result in results:
        counts = result.body.get("usage") if result.ok else None
        if not isinstance(counts, dict):
            continue  # moderations report no usage
        prompt += counts.get("prompt_tokens", 0)
        completion += counts.get("completion_tokens", 0)
        cached += counts.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        thought += counts.get("completion_tokens_details", {}).get("reasoning_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": thought},
        "total_tokens": prompt + completion,
    }
