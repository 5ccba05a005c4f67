"""What the fake says: chat reply content for each response_format, its faulty variants, and
the chat completion and moderation bodies in OpenAI's shapes.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

from consumer.testing.fake_openai.heuristic import KEYS, Judgement, find_blocks, judge
from consumer.testing.fake_openai.images import IMAGE_CATEGORIES, image_urls, with_images
from consumer.testing.fake_openai.instances import Context, SchemaError, generate
from consumer.testing.fake_openai.usage import message_text

REFUSAL = "I'm sorry, I can't help with that."
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

# Ids only need to be unique per run; a counter is cheaper than uuid4 per request.
_RUN = os.urandom(4).hex()
_serial = itertools.count(1)


def new_id(prefix: str) -> str:
    """A unique id like ``chatcmpl-1a2b3c4d000000000001``."""
    return f"{prefix}-{_RUN}{next(_serial):012x}"


def last_user_text(messages: list[Any]) -> str:
    """The text to judge: the last user message that holds a ``<content>`` block, else the
    last user message (empty when there is none).

    Looking back for the block matters for repair turns, where the last user message only
    says what was wrong with the previous reply.
    """
    users = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return next(
        (text for text in reversed(users) if "<content" in text), users[-1] if users else ""
    )


def context_for(text: str, images: Sequence[str] = ()) -> Context:
    """The judged content of a user message, and of the ``images`` (URLs) sent with it.

    When the message delimits content in ``<content ...>`` blocks, only the blocks are judged
    (the classifier's instructions around them mention categories and would score); each block
    is kept for the batch form. An image raises the scores of the categories images are
    scored for (:mod:`.images`).
    """
    blocks = tuple(find_blocks(text))
    judged = "\n".join(block for _, block in blocks) if blocks else text
    judgement = judge(judged)
    if images:
        judgement = with_images(judgement, images)
    return Context(judgement=judgement, index=blocks[0][0] if blocks else 0, blocks=blocks)


def user_images(messages: list[Any]) -> list[str]:
    """The image URLs of every user message, in order (modstream sends them in the first)."""
    return [
        url
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user"
        for url in image_urls(m.get("content"))
    ]


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema of a ``json_schema`` response_format, else None."""
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise SchemaError("response_format.json_schema.schema must be an object")
        schema: dict[str, Any] = spec.get("schema", {})
        return schema
    return None


#: How a prompt states the reply's schema in json_object and text mode (the client's words).
_PROMPT_SCHEMA = re.compile(r"JSON Schema:\s*(?=\{)")


def prompt_schema(messages: list[Any]) -> dict[str, Any] | None:
    """The JSON Schema a system message asks the reply to match, if it states one.

    A real model reads the schema from the prompt in json_object and text mode; the fake
    finds it after the words ``JSON Schema:`` and answers with an instance of it.
    """
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "system":
            continue
        text = message_text(message)
        if (found := _PROMPT_SCHEMA.search(text)) is None:
            continue
        try:
            schema, _ = json.JSONDecoder().raw_decode(text, found.end())
        except ValueError:
            continue
        if isinstance(schema, dict):
            return schema
    return None


def content_value(
    response_format: Any, context: Context, prompted: dict[str, Any] | None = None
) -> Any:
    """The reply as a JSON value (json_schema / json_object), or a string for plain text.

    ``prompted``: a schema the prompt states (:func:`prompt_schema`), followed when the
    response_format does not carry one.
    """
    schema = response_schema(response_format)
    if schema is not None:
        return generate(schema, context)
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if prompted is not None and kind in (None, "text", "json_object"):
        return generate(prompted, context)
    judgement = context.judgement
    if kind == "json_object":
        return {"scores": dict(judgement.scores), "rationale": judgement.rationale}
    if kind not in (None, "text"):
        raise SchemaError(f"unsupported response_format type {kind!r}")
    return plain_text(judgement)


def plain_text(judgement: Judgement) -> str:
    """A one-sentence verdict for requests without a response_format."""
    if not judgement.flagged:
        return f"Not flagged: {judgement.rationale}."
    return f"Flagged for {KEYS[judgement.top_category()]}: {judgement.rationale}."


def render(value: Any) -> str:
    """Reply content text: JSON values serialised compactly, plain text as is."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


#: The prose that ``trailing_prose`` replies add after the JSON.
TRAILING_PROSE = "\n\nThese scores reflect the content as a whole; no category stands out."


def malformed(value: Any, kind: str) -> str:
    """A broken reply of ``kind``, from the good ``value``.

    Broken values: ``invalid_json`` (does not parse), ``schema_violation`` (parses, breaks the
    schema), ``out_of_range`` (one score out of [0, 1]). Only the wrapping wrong, every value
    as it was: ``fenced`` (in a Markdown code fence), ``trailing_prose`` (a sentence after the
    JSON), ``unknown_keys`` (a key the schema does not have in every object).
    """
    text = render(value)
    if kind == "invalid_json":
        # A trailing comma before the closing brace: looks right, does not parse.
        return text[:-1] + ",}" if text.endswith("}") else "{" + text
    if kind == "schema_violation":
        if isinstance(value, dict) and value:
            bad: dict[str, Any] = dict(value)
            first = next(iter(bad))
            # Wrong type for the first property and a property the schema does not allow.
            bad[first] = 12345 if isinstance(bad[first], str) else "n/a"
            bad["unexpected_field"] = True
            return render(bad)
        return render({"unexpected_field": True} if isinstance(value, list) else ["unexpected"])
    if kind == "fenced":
        # As chat models write JSON when nothing enforces the format: indented, in a fence.
        body = value if isinstance(value, str) else json.dumps(value, indent=2)
        return f"```json\n{body}\n```"
    if kind == "trailing_prose":
        return text + TRAILING_PROSE
    if kind == "unknown_keys":
        return render(_with_unknown_keys(value, top=True))
    if kind == "out_of_range":
        return render(_out_of_range(value))
    raise ValueError(f"unknown malformed kind {kind!r}")


def _with_unknown_keys(value: Any, *, top: bool) -> Any:
    """``value`` with one key more in every object: ``confidence`` at the top, ``note`` below
    (underscores appended while the name is taken)."""
    if isinstance(value, list):
        return [_with_unknown_keys(item, top=False) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: _with_unknown_keys(inner, top=False) for key, inner in value.items()}
    name = "confidence" if top else "note"
    while name in out:
        name += "_"
    out[name] = 0.87 if top else "not part of the schema"
    return out


def _out_of_range(value: Any) -> Any:
    """``value`` with its largest float in [0, 1] (the first of equals) out of that range:
    x100 when that is above 1 (a percentage), else x - 1 (negative). Unchanged without one."""
    found: list[tuple[float, list[str | int]]] = []

    def walk(node: Any, path: list[str | int]) -> None:
        if isinstance(node, dict):
            for key, inner in node.items():
                walk(inner, [*path, key])
        elif isinstance(node, list):
            for i, inner in enumerate(node):
                walk(inner, [*path, i])
        elif isinstance(node, float) and 0.0 <= node <= 1.0:
            found.append((node, path))

    walk(value, [])
    if not found:
        return value
    score, path = max(found, key=lambda item: item[0])  # max keeps the first of equals
    bad = score * 100 if score * 100 > 1 else score - 1
    out = json.loads(json.dumps(value))  # a deep copy of plain JSON
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = bad
    return out


def truncated(text: str) -> str:
    """The reply cut mid-way, as a length stop leaves it."""
    return text[: max(1, len(text) // 2)]


def completion_body(
    *,
    model: str,
    content: str | None,
    refusal: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """A ``chat.completion`` object in OpenAI's exact shape."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": refusal,
        "annotations": [],
    }
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_modstream_fake",
    }


def moderation_inputs(raw: Any) -> list[str]:
    """The texts of a moderations ``input``: a string, strings, or multimodal parts."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return list(raw)
    if isinstance(raw, list) and all(isinstance(item, dict) for item in raw):
        # Multimodal parts make one input: its text parts here, its images by image_urls.
        return ["\n".join(str(p.get("text", "")) for p in raw if p.get("type") == "text")]
    raise SchemaError("input must be a string, a list of strings, or a list of content parts")


def moderation_body(model: str, texts: list[str], images: Sequence[str] = ()) -> dict[str, Any]:
    """A moderation response with one result per input text; ``images``: the image URLs of a
    multi-modal input (one text, so one result).

    ``category_applied_input_types`` says, as OpenAI's does, which input types a category's
    score applies to: ``text`` always, and ``image`` for the categories images are scored for
    when the input had any (:data:`.images.IMAGE_CATEGORIES`)."""
    results = []
    for text in texts:
        judgement = with_images(judge(text), images) if images else judge(text)
        flags = judgement.flags()
        applied = {
            name: ["text", "image"] if images and key in IMAGE_CATEGORIES else ["text"]
            for key, name in KEYS.items()
        }
        results.append(
            {
                "flagged": judgement.flagged,
                "categories": {name: flags[key] for key, name in KEYS.items()},
                "category_scores": {name: judgement.scores[key] for key, name in KEYS.items()},
                "category_applied_input_types": applied,
            }
        )
    return {"id": new_id("modr"), "model": model, "results": results}
