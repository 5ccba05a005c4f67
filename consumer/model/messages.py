"""A chat message as modstream builds and sends it, and its text.

A message is a dict with a ``role`` and a ``content``: a string, or (a user message with
images) a list of content parts, text first (:mod:`consumer.model.image_parts`). Kept a plain
dict, not the SDK's TypedDicts: the lean sender serializes it as it is, once per call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Message", "text_of"]

#: One chat message: ``{"role": ..., "content": str | list[part]}``.
Message = dict[str, Any]


def text_of(message: Message) -> str:
    """The message's text: its content string, or its text parts joined (images left out)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
