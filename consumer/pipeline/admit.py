"""Admit stage: count the content's tokens, enforce the hard limit, fit it into the budget.

The budget is what the content (text + context) may take inside the model's context window
once the prompt and the completion are accounted for; the caller computes it. A text over the
hard limit (``MODSTREAM_MAX_INPUT_TOKENS``) is always refused. Content over the budget is
refused under ``OversizePolicy.DEAD_LETTER``; under ``TRUNCATE`` the context gives way first
(its tail, the most recent part of a thread, is kept), then the text keeps its head and tail
around a marker saying how much was left out: openings and endings carry most of the signal
(greeting, sign-off, the payload after a long innocuous preamble).

Cost. The text and the context are each encoded once: the exact count is part of the result,
so one encode per field is the floor. Truncation slices the token list it already has and
re-encodes only the short result. The tempting byte-length shortcut ("UTF-8 bytes <= budget,
so tokens <= budget": true, because with special tokens disabled every BPE token stands for at
least one byte) would skip nothing, since the exact count is needed anyway; the one encode that
is avoidable is the context's when the text alone already overflows and will push it out.
Encoding is up to ~0.5 s for a 1 MB pathological value (a run of one letter), and tiktoken
releases the GIL: callers on the event loop should run large values in a thread.

Images (``ModerationRequest.images``) are checked first (:mod:`consumer.pipeline.images`: their
count, size, base64 and type; a failure is a dead letter) and counted by OpenAI's tile rule
(:mod:`consumer.model.image_tokens`; a URL image at the most an image can cost). They cannot be
cut: their tokens come off the budget before the text's, and images that leave less than
``MIN_BUDGET_TOKENS`` for the text are refused whatever the oversize policy.

Cuts fall on token boundaries moved to the nearest UTF-8 character boundary, so the kept parts
are exact prefixes and suffixes of the original: no U+FFFD from a half-decoded character.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from consumer.errors import AdmissionError, ConfigError
from consumer.model.image_tokens import image_tokens, unknown_size_tokens
from consumer.model.tokens import encoding_for_model
from consumer.pipeline.images import CheckedImage, check_images
from consumer.settings import OversizePolicy
from schemas import ImageData, ModerationRequest

__all__ = ["MIN_BUDGET_TOKENS", "Admitted", "Admitter", "context_marker", "text_marker"]

#: Smallest workable budget: the marker alone is about a dozen tokens.
MIN_BUDGET_TOKENS = 32

#: Below this many tokens of kept context (after its marker), the context is dropped instead:
#: a few words out of a thread mislead more than they inform.
_MIN_CONTEXT_TOKENS = 16


def text_marker(omitted: int) -> str:
    """What replaces the middle of a truncated text."""
    return f"\n[… {omitted} tokens omitted …]\n"


def context_marker(omitted: int) -> str:
    """What precedes the kept tail of a truncated context."""
    return f"[… {omitted} earlier tokens omitted …]\n"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request cleared for classification, with the content the model will actually see."""

    request: ModerationRequest
    #: What the model will see: the request's text, or its head and tail around a marker.
    text: str
    #: The request's context, its tail after a marker, or ``None`` when dropped to make room.
    context: str | None
    #: The text was cut (what ``Verdict.truncated`` reports).
    truncated: bool
    #: Tokens of ``text`` plus tokens of ``context``, counted after truncation, plus the
    #: images' tokens.
    content_tokens: int
    #: The request's images, checked, in order (empty: text only).
    images: tuple[CheckedImage, ...] = ()


#: Requests with more characters than this (text, context, inline image data) are admitted in
#: a worker thread: ~1 ms of tiktoken on the loop, and tiktoken releases the GIL.
INLINE_CHARS = 20_000


async def admit_off_loop(admitter: Admitter, request: ModerationRequest) -> Admitted:
    """``admitter.admit(request)``, in a worker thread when the request is large, so a megabyte
    of text (or a large inline image's base64 and header check) never blocks the event loop."""
    size = len(request.text) + len(request.context or "")
    size += sum(len(image.data) for image in request.images if isinstance(image, ImageData))
    if size > INLINE_CHARS:
        return await asyncio.to_thread(admitter.admit, request)
    return admitter.admit(request)


class Admitter:
    """Counts tokens for one model and applies the size limits and the oversize policy."""

    def __init__(
        self,
        *,
        model: str,
        budget_tokens: int,
        max_input_tokens: int,
        oversize: OversizePolicy,
        max_images: int = 4,
        max_image_bytes: int = 5 * 1024 * 1024,
    ) -> None:
        if budget_tokens < MIN_BUDGET_TOKENS:
            raise ConfigError(
                f"the content budget is {budget_tokens} tokens, below the workable minimum "
                f"{MIN_BUDGET_TOKENS}: raise MODSTREAM_CONTEXT_WINDOW or lower "
                "MODSTREAM_MAX_TOKENS or shorten the prompt"
            )
        if max_input_tokens < 1:
            raise ConfigError(
                f"MODSTREAM_MAX_INPUT_TOKENS must be positive, got {max_input_tokens}"
            )
        self.model = model
        self.budget_tokens = budget_tokens
        self.max_input_tokens = max_input_tokens
        self.oversize = oversize
        self.max_images = max_images
        self.max_image_bytes = max_image_bytes
        self._encoding = encoding_for_model(model)

    def count(self, text: str) -> int:
        """Tokens ``text`` takes for this model (special-token text counted as plain text)."""
        return len(self._encode(text))

    def image_tokens(self, image: CheckedImage) -> int:
        """Prompt tokens ``image`` takes for this model (the most possible when its size is
        unknown)."""
        if image.width is None or image.height is None:
            return unknown_size_tokens(self.model)
        return image_tokens(image.width, image.height, self.model)

    def admit(self, request: ModerationRequest) -> Admitted:
        """Check and fit one request; raise ``AdmissionError`` (or ``DecodeError``, for an
        image's bytes) when it cannot be admitted."""
        if not request.images:
            return self._admit_text(request, self.budget_tokens)
        images = check_images(
            request.images, max_images=self.max_images, max_image_bytes=self.max_image_bytes
        )
        n_images = sum(self.image_tokens(image) for image in images)
        budget = self.budget_tokens - n_images
        if budget < MIN_BUDGET_TOKENS:
            raise AdmissionError(
                f"the {len(images)} images take {n_images:,} tokens; with at least "
                f"{MIN_BUDGET_TOKENS} for the text they do not fit the content budget "
                f"({self.budget_tokens:,} tokens)"
            )
        admitted = self._admit_text(request, budget)
        return replace(admitted, images=images, content_tokens=admitted.content_tokens + n_images)

    def _admit_text(self, request: ModerationRequest, budget: int) -> Admitted:
        """The text and context fitted into ``budget`` tokens."""
        text = request.text
        text_tokens = self._encode(text)
        n_text = len(text_tokens)
        if n_text > self.max_input_tokens:
            raise AdmissionError(
                f"text is {n_text:,} tokens; the limit (MODSTREAM_MAX_INPUT_TOKENS) is "
                f"{self.max_input_tokens:,}: {n_text - self.max_input_tokens:,} over"
            )
        context = request.context
        truncating = self.oversize is OversizePolicy.TRUNCATE
        if context and truncating and n_text >= budget:
            # Even an empty context would leave no room: skip encoding it.
            return self._cut_text(request, text_tokens, budget)

        context_tokens = self._encode(context) if context else []
        total = n_text + len(context_tokens)
        if total <= budget:
            return Admitted(request, text, context, truncated=False, content_tokens=total)
        if not truncating:
            what = "text and context are" if context_tokens else "text is"
            images = " and images" if budget < self.budget_tokens else ""
            raise AdmissionError(
                f"{what} {total:,} tokens; the content budget (context window minus prompt"
                f"{images} and completion) is {budget:,}: {total - budget:,} over, and "
                "MODSTREAM_OVERSIZE=dead_letter"
            )
        if context:
            kept = self._cut_context(context, context_tokens, room=budget - n_text)
            if kept is not None:
                new_context, n_context = kept
                return Admitted(
                    request, text, new_context, truncated=False, content_tokens=n_text + n_context
                )
        return self._cut_text(request, text_tokens, budget)

    def _encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, disallowed_special=())

    def _utf8(self, text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # decode rejects these; a request built elsewhere might still carry one.
            raise AdmissionError(
                "content contains an unpaired surrogate and cannot be cut safely"
            ) from None

    def _cut_context(self, context: str, tokens: list[int], *, room: int) -> tuple[str, int] | None:
        """The context's tail behind a marker, fitting ``room`` tokens; ``None``: drop it."""
        raw = self._utf8(context)
        n = len(tokens)
        keep = room - self.count(context_marker(n))
        while keep >= _MIN_CONTEXT_TOKENS:
            start = _char_start(raw, len(raw) - len(self._encoding.decode_bytes(tokens[-keep:])))
            cut = context_marker(n - keep) + raw[start:].decode("utf-8")
            used = self.count(cut)
            if used <= room:
                return cut, used
            # Re-encoding across the cut can merge differently: give back the excess and retry.
            keep -= used - room
        return None

    def _cut_text(self, request: ModerationRequest, tokens: list[int], budget: int) -> Admitted:
        """The text's head (~2/3) and tail (~1/3) around a marker, within the whole ``budget``;
        no context (it had to go to make room)."""
        n = len(tokens)
        if n <= budget:  # only the context had to go
            return Admitted(request, request.text, None, truncated=False, content_tokens=n)
        raw = self._utf8(request.text)
        keep = budget - self.count(text_marker(n))
        while True:
            keep = max(keep, 0)
            head_k = (keep * 2 + 2) // 3
            tail_k = keep - head_k
            head_end = _char_end(raw, len(self._encoding.decode_bytes(tokens[:head_k])))
            tail_start = _char_start(
                raw, len(raw) - len(self._encoding.decode_bytes(tokens[n - tail_k :]))
            )
            cut = (
                raw[:head_end].decode("utf-8")
                + text_marker(n - keep)
                + raw[tail_start:].decode("utf-8")
            )
            used = self.count(cut)
            if used <= budget:
                return Admitted(request, cut, None, truncated=True, content_tokens=used)
            if keep == 0:  # unreachable: MIN_BUDGET_TOKENS leaves room for the marker alone
                raise AdmissionError(f"the content budget ({budget} tokens) cannot fit the marker")
            keep -= used - budget


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80


def _char_end(raw: bytes, end: int) -> int:
    """Move a cut at byte ``end`` back to the start of the character it splits, if any."""
    while 0 < end < len(raw) and _is_continuation(raw[end]):
        end -= 1
    return end


def _char_start(raw: bytes, start: int) -> int:
    """Move a cut at byte ``start`` forward past the rest of the character it splits, if any."""
    while start < len(raw) and _is_continuation(raw[start]):
        start += 1
    return start
