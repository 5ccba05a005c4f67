"""Token usage the way OpenAI reports it, including a simulated prompt prefix cache.

Prompt tokens follow OpenAI's published recipe for chat models: 3 tokens per message, plus the
tokens of its role, content (and name, +1), plus 3 that prime the reply. The response_format
schema is not counted (OpenAI counts it, in a way it does not document). An image part counts
by OpenAI's tile rule (:mod:`.images`).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

from consumer.model.tokens import count_tokens, encoding_for_model
from consumer.testing.fake_openai.images import image_urls, tokens_of_image

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
CACHE_BLOCK = 128


@functools.lru_cache(maxsize=16384)
def tokens(text: str, model: str) -> int:
    """Tokens of ``text`` for ``model``; cached because system prompts repeat on every call."""
    return count_tokens(text, model)


def message_text(message: Any) -> str:
    """A message's text: the content string, or its text parts joined."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Text parts only: an image part has no text (its tokens are counted by the tile rule).
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""


def message_tokens(message: Any, model: str) -> int:
    """Tokens one message adds to the prompt: its text, and its images by the tile rule."""
    count = TOKENS_PER_MESSAGE + tokens(message_text(message), model)
    if isinstance(message, dict):
        count += sum(tokens_of_image(url, model) for url in image_urls(message.get("content")))
        count += tokens(str(message.get("role", "")), model)
        if message.get("name"):
            count += TOKENS_PER_NAME + tokens(str(message["name"]), model)
    return count


def prompt_tokens(messages: list[Any], model: str) -> tuple[int, int]:
    """``(prompt tokens, tokens of the first message)``."""
    counts = [message_tokens(m, model) for m in messages]
    return sum(counts) + REPLY_PRIMING, (counts[0] if counts else 0)


def cut_to_tokens(text: str, limit: int, model: str) -> str:
    """The first ``limit`` tokens of ``text`` (for replies over max_tokens)."""
    encoding = encoding_for_model(model)
    return encoding.decode(encoding.encode(text, disallowed_special=())[:limit])


class PrefixCache:
    """Remembers first messages, so a repeat of a long one reports cached tokens.

    Like OpenAI's prompt caching: only prefixes of at least ``min_tokens`` count, and cached
    tokens come in whole blocks of 128.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def cached_tokens(self, model: str, first: Any, first_tokens: int, min_tokens: int) -> int:
        """Cached tokens for a prompt whose first message is ``first``; remembers it."""
        key = (
            (model, str(first.get("role")) + "\x00" + message_text(first))
            if isinstance(first, dict)
            else (model, "")
        )
        hit = key in self.seen
        if hit:
            self.seen.move_to_end(key)
        else:
            self.seen[key] = None
            if len(self.seen) > self.max_entries:
                self.seen.popitem(last=False)
        if not hit or first_tokens < min_tokens:
            return 0
        return first_tokens // CACHE_BLOCK * CACHE_BLOCK

    def clear(self) -> None:
        """Forget everything (``POST /_fake/reset``)."""
        self.seen.clear()
