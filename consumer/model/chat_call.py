"""One chat call, end to end: a limiter slot, the request in the reply format's mode, the
provider's errors in our terms, and the call's usage read from the reply.

What :meth:`ChatCall.send` does for every chat call (a message's, a batch's, a witness's), once
per attempt; the retry layer and the breaker around it are :mod:`consumer.model.calls`, the
transport under it (the lean aiohttp sender or the SDK's) :mod:`consumer.model.chat_client`.

- The limiter slot is taken for the request's token estimate and settled with what the reply
  says it used; the reply's ``x-ratelimit-*`` headers feed the limiter's buckets.
- The reply format's mode (:class:`~consumer.model.reply_format.ResponseFormats`) is read after
  the wait for a slot, so a downgrade meanwhile applies to this request; a 400 for the format
  in ``auto`` raises ``FormatDowngraded`` (sent again at once, in the new mode).
- The static part of the request (model, budget, temperature, ``response_format``...) is
  serialized once per shape (:meth:`ChatCall.statics`): a message costs only its messages.
- The usage (:class:`~consumer.model.ledger.Tokens`) is the provider's, or counted locally and
  marked estimated when the server reports none (vLLM and Ollama may not); a 200 with no choices
  is recorded as such, then raised as ``ProviderUnavailable`` (retried like any outage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from consumer.errors import FormatDowngraded, ProviderUnavailable, RequestRejected
from consumer.model.chat_client import ChatSender, Completion, Statics
from consumer.model.ledger import Recorder, Tokens
from consumer.model.limit import Limiter
from consumer.model.messages import Message, text_of
from consumer.model.provider import failed_outcome, translate
from consumer.model.reply_format import ReplyFormat, ReplyMode, ResponseFormats
from consumer.model.request_params import RequestParams
from consumer.model.tokens import count_tokens
from consumer.ops.metrics import Metrics
from schemas import UsageOutcome

__all__ = ["ChatCall", "ChatRequest"]

#: A 200 with no choices: recorded as such, then retried like any transient failure.
_NO_CHOICES = UsageOutcome.PROVIDER_UNAVAILABLE

#: Request shapes whose static part is kept serialized (see :meth:`ChatCall.statics`).
_STATICS_KEPT = 64


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request: what is sent, and the token estimate for the limiter.

    ``max_tokens`` is the completion budget, sent under the name the model takes;
    ``reply_format`` is shaped into the messages and ``response_format`` of the mode in force
    when the request goes out (read after the limiter slot: a downgrade while it waited
    applies to it).
    """

    messages: list[Message]
    max_tokens: int
    reply_format: ReplyFormat
    estimate: int


class ChatCall:
    """Sends one chat request to one model and reads its usage (see the module docstring)."""

    def __init__(
        self,
        client: AsyncOpenAI,
        sender: ChatSender,
        *,
        model: str,
        params: RequestParams,
        formats: ResponseFormats,
        limiter: Limiter,
        metrics: Metrics,
        on_accepted: Callable[[], None] = lambda: None,
    ) -> None:
        """``client``: the provider's configuration and error vocabulary; ``sender``: how the
        request goes (:mod:`consumer.model.chat_client`); ``on_accepted``: called for every
        chat request the provider answers with a 200."""
        self.client = client
        self.sender = sender
        self.model = model
        self.params = params
        self.formats = formats
        self.limiter = limiter
        self.metrics = metrics
        self.on_accepted = on_accepted
        #: Pre-serialized static parts per request shape (see :meth:`statics`).
        self._statics: dict[tuple[str, ReplyMode, int], Statics] = {}

    async def send(self, request: ChatRequest, record: Recorder) -> Completion:
        """One chat completion; its usage (answered or failed) goes to ``record``."""
        async with self.limiter.slot(request.estimate) as permit:
            mode = self.formats.mode  # after the wait for a slot: a downgrade meanwhile counts
            messages = request.reply_format.messages(request.messages, mode)
            statics = self.statics(request, mode)
            started = time.perf_counter()
            try:
                completion, headers = await self.sender.create(messages, statics)
                self.limiter.observe_headers(headers)
            except (openai.OpenAIError, ValueError) as exc:
                # ValueError: a 200 whose body is not a chat completion (a broken proxy).
                permit.settle(0)
                error = translate(exc, model=self.model, base_url=self.client.base_url)
                record(failed_outcome(error), Tokens(0, 0), started)
                if isinstance(error, RequestRejected) and self.formats.downgrade(mode, exc):
                    raise FormatDowngraded(error.message) from exc  # again, in the new mode
                raise error from exc
        self.on_accepted()
        self.formats.accepted(mode)
        counts = self.tokens(completion, messages)
        permit.settle(counts.prompt + counts.completion)
        record(UsageOutcome.OK if completion.choices else _NO_CHOICES, counts, started)
        if not completion.choices:
            self.metrics.reply_problem(self.model, _NO_CHOICES.value)
            raise ProviderUnavailable("the model returned no choices")
        return completion

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body :meth:`send` would post for ``request`` now (the reply format's mode in
        force): ``messages`` and the static fields, exactly as the senders serialize them. For a
        request sent some other way (a Batch API line, :mod:`consumer.tools.batch_requests`)."""
        mode = self.formats.mode
        messages = request.reply_format.messages(request.messages, mode)
        return {"messages": messages, **self.statics(request, mode).kwargs}

    def tokens(self, completion: Completion, messages: list[Message]) -> Tokens:
        """The call's token counts: the provider's, else counted here from ``messages`` (as
        sent, schema note and all) and the reply, and marked estimated."""
        usage = completion.usage
        if (
            usage is not None
            and usage.prompt_tokens is not None
            and usage.completion_tokens is not None
        ):
            details = usage.prompt_tokens_details
            cached = (details.cached_tokens if details else None) or 0
            spent = usage.completion_tokens_details
            reasoning = (spent.reasoning_tokens if spent else None) or 0
            return Tokens(
                usage.prompt_tokens, usage.completion_tokens, cached, reasoning=max(reasoning, 0)
            )
        # Text parts only: this estimate leaves an image's tokens out (rare: a server that
        # reports no usage is a self-hosted one, whose image tokens follow no rule we know).
        text = "".join(text_of(m) for m in messages)
        reply = completion.choices[0].message.content if completion.choices else ""
        return Tokens(
            count_tokens(text, self.model), count_tokens(reply or "", self.model), 0, True
        )

    def statics(self, request: ChatRequest, mode: ReplyMode) -> Statics:
        """The static part of ``request`` in ``mode``: built once per shape (reply schema,
        mode, completion budget), so a message costs only the serialization of its own
        messages."""
        key = (request.reply_format.instructions, mode, request.max_tokens)
        statics = self._statics.get(key)
        if statics is None:
            if len(self._statics) >= _STATICS_KEPT:  # budgets vary only with a batch's size
                self._statics.clear()
            # The budget's name, temperature, reasoning_effort, seed: from the family table.
            kwargs: dict[str, Any] = {"model": self.model, **self.params.kwargs(request.max_tokens)}
            response_format = request.reply_format.response_format(mode)
            if response_format is not None:  # text mode sends none at all
                kwargs["response_format"] = response_format
            statics = self._statics[key] = Statics.of(kwargs)
        return statics
