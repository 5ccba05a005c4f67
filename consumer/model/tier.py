"""The first tier: one call to the provider's moderations endpoint before the chat model.

The policy's ``first_tier`` section (:class:`~consumer.model.policy.FirstTier`) names the model
and an uncertain band. :meth:`consumer.model.classify.Classifier.first_tier` sends each admitted
text here first, through the same retry layer, circuit breaker and limiter as chat calls
(:mod:`consumer.model.calls`); the endpoint's ``category_scores`` map to the policy's categories
by name (the response's slash names, ``self-harm/intent``; a category the endpoint does not
score is 0.0). When no score lies inside the band, the policy decides on these scores
(:meth:`consumer.model.verdicts.VerdictFactory.first_tier`) and the chat model is never asked.

With images (:mod:`consumer.model.image_parts`) the input is the multi-modal list, text first;
the result's ``category_applied_input_types`` say which inputs each category was flagged for
(:func:`applied_inputs`), and flagged categories carry them into ``Verdict.category_inputs``.

A moderation call reports no tokens and costs nothing at OpenAI: its usage event says 0 tokens
and 0.0 USD. Its ``x-ratelimit-*`` headers describe the moderations endpoint's own limits, not
the chat model's, so they are not fed to the limiter's buckets.

A 404 here (an unknown moderation model) is a misconfiguration, fatal like the chat model's;
other rejections leave the decision to the chat model.
"""

from __future__ import annotations

import time
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types import Moderation, ModerationCreateResponse, ModerationMultiModalInputParam

from consumer.model.ledger import ModerationRecorder
from consumer.model.limit import Limiter
from consumer.model.policy import Policy
from consumer.model.provider import failed_outcome, translate
from schemas import UsageOutcome


async def send_moderation(
    client: AsyncOpenAI,
    limiter: Limiter,
    model: str,
    content: str | list[dict[str, Any]],
    record: ModerationRecorder,
) -> Moderation:
    """One moderations call for ``content`` (a text, or a text and its images as parts:
    :func:`consumer.model.image_parts.moderation_input`); its usage (ok or failed) goes to
    ``record``."""
    async with limiter.slot(0) as permit:  # a request and a concurrency slot, no chat tokens
        permit.settle(0)
        started = time.perf_counter()
        try:
            raw = await client.moderations.with_raw_response.create(
                model=model, input=cast("str | list[ModerationMultiModalInputParam]", content)
            )
            response = raw.parse()
            if not isinstance(response, ModerationCreateResponse) or not response.results:
                raise ValueError("the 200 reply is not a moderation result")
        except (openai.OpenAIError, ValueError) as exc:
            # ValueError: a 200 whose body is not a moderation result (a broken proxy).
            error = translate(exc, model=model, base_url=client.base_url)
            record(failed_outcome(error), started)
            raise error from exc
        record(UsageOutcome.OK, started)
    return response.results[0]


def moderation_scores(result: Moderation, policy: Policy) -> dict[str, float]:
    """The endpoint's scores for the policy's categories, by name (missing: 0.0)."""
    # by_alias: the SDK's field names are python-safe (self_harm_intent); the API's are not.
    raw = result.category_scores.model_dump(by_alias=True)
    scores = {}
    for category in policy.categories:
        value = raw.get(category.name)
        score = float(value) if isinstance(value, int | float) else 0.0
        scores[category.name] = min(1.0, max(0.0, score))
    return scores


def applied_inputs(result: Moderation, policy: Policy, n_images: int) -> dict[str, list[str]]:
    """The endpoint's ``category_applied_input_types`` for the policy's categories, in the
    verdict's words: ``text``, and ``image:0`` when the request had one image (the endpoint
    says ``image``, never which; with several images it stays ``image``)."""
    applied = getattr(result, "category_applied_input_types", None)
    raw = applied.model_dump(by_alias=True) if applied is not None else {}
    image = "image:0" if n_images == 1 else "image"
    inputs: dict[str, list[str]] = {}
    for category in policy.categories:
        kinds = raw.get(category.name)
        if isinstance(kinds, list) and kinds:
            inputs[category.name] = [image if kind == "image" else str(kind) for kind in kinds]
    return inputs
