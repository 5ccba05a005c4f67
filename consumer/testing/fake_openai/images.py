"""Image parts: found in a request, scored deterministically, counted by the tile rule.

The fake looks at no pixels. An image's scores come from a hash of its URL (a ``data:`` URL
included), like a text's from a hash of the text: the same image always scores the same. An
image is **harmful** when its URL, or the decoded bytes of its ``data:`` URL, contain the
marker ``harmful`` (ASCII, any case): ``violence`` then scores 0.90-0.99 and
``violence/graphic`` 0.10-0.15, as a keyword hit and its subcategory do for text. Only the
categories OpenAI's omni-moderation scores images for take an image's scores (the others are
the text's alone): violence, violence/graphic, self-harm (and /intent, /instructions), sexual.

Usage counts an image as modstream does (:mod:`consumer.model.image_tokens`): a ``data:`` image
by its header's dimensions, an https one at the most an image can cost.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Iterable
from typing import Any

from consumer.model.image_tokens import image_tokens, unknown_size_tokens
from consumer.pipeline.images import dimensions, sniff
from consumer.testing.fake_openai.heuristic import Judgement, category_key

__all__ = [
    "IMAGE_CATEGORIES",
    "MARKER",
    "image_urls",
    "judge_image",
    "tokens_of_image",
    "with_images",
]

#: What makes an image harmful (see the module docstring).
MARKER = b"harmful"

#: The categories omni-moderation scores images for (OpenAI's moderation guide).
IMAGE_CATEGORIES: frozenset[str] = frozenset(
    category_key(name)
    for name in (
        "violence",
        "violence/graphic",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
    )
)


def image_urls(parts: Any) -> list[str]:
    """The ``image_url.url`` of every image part of a message's content (or a moderation
    input list), in order; anything else is skipped."""
    if not isinstance(parts, list):
        return []
    urls = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str):
                urls.append(url)
    return urls


@functools.lru_cache(maxsize=1024)
def _data(url: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URL; ``None`` for any other URL or bad base64."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        return None


@functools.lru_cache(maxsize=1024)
def judge_image(url: str) -> dict[str, float]:
    """Scores of one image for the image categories (deterministic per URL)."""
    digest = hashlib.blake2b(url.encode("utf-8", "replace"), digest_size=16).digest()
    raw = _data(url)
    harmful = MARKER in url.lower().encode("utf-8", "replace") or (
        raw is not None and MARKER in raw.lower()
    )
    scores = {}
    for i, key in enumerate(sorted(IMAGE_CATEGORIES)):
        byte = digest[i]
        if harmful and key == "violence":
            scores[key] = round(0.90 + 0.09 * byte / 255, 3)
        elif harmful and key == "violence_graphic":
            scores[key] = round(0.10 + 0.05 * byte / 255, 3)
        else:
            scores[key] = round(0.01 + 0.04 * byte / 255, 3)
    return scores


def with_images(judgement: Judgement, urls: Iterable[str]) -> Judgement:
    """``judgement`` with each image category's score raised to the highest image's."""
    scores = dict(judgement.scores)
    marked = False
    for url in urls:
        for key, score in judge_image(url).items():
            if score > scores[key]:
                scores[key] = score
                marked = marked or score >= 0.5
    matched = (*judgement.matched, "image") if marked else judgement.matched
    return Judgement(scores=scores, matched=matched)


def tokens_of_image(url: str, model: str) -> int:
    """Prompt tokens of one image part for ``model``, as modstream counts them."""
    raw = _data(url)
    mime = sniff(raw) if raw is not None else None
    size = dimensions(raw, mime) if raw is not None and mime is not None else None
    if size is None:
        return unknown_size_tokens(model)
    return image_tokens(size[0], size[1], model)
