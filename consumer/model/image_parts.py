"""A message's images in the two request shapes: chat content parts and moderation input.

Both endpoints take OpenAI's ``image_url`` part, ``{"type": "image_url", "image_url": {"url":
...}}``, with the https URL or a ``data:<mime>;base64,`` URL of an inline image
(:class:`~consumer.pipeline.images.CheckedImage` holds which). The text comes first, then the
images in the request's order, so ``image:N`` in a verdict is the request's ``images[N]``. No
``detail`` is sent (the provider's ``auto``); the tokens are counted as ``high``
(:mod:`consumer.model.image_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumer.pipeline.images import CheckedImage

__all__ = ["content_parts", "moderation_input"]


def content_parts(text: str, images: Sequence[CheckedImage]) -> list[dict[str, Any]]:
    """``text`` and then each image, as the parts of one message's ``content``."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts.extend({"type": "image_url", "image_url": {"url": image.url}} for image in images)
    return parts


def moderation_input(text: str, images: Sequence[CheckedImage]) -> str | list[dict[str, Any]]:
    """The moderations ``input``: the text alone (as before images existed), or the
    multi-modal list ``omni-moderation`` takes, judged as one input."""
    return content_parts(text, images) if images else text
