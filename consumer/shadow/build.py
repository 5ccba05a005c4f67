"""The candidate's classifier and admitter, from the ``MODSTREAM_SHADOW_*`` settings.

The candidate is production's configuration with the shadow model, prompt and policy in place
of production's (each defaults to production's own), a share of the concurrency and of the RPM
and TPM budgets, no micro-batching, and metrics of its own: its calls never show in
production's call, token, cost or circuit figures.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from openai import AsyncOpenAI

from consumer.errors import ConfigError
from consumer.model.build import model_stages
from consumer.model.chat_client import ChatSender
from consumer.model.classify import Classifier
from consumer.model.limit import Limiter
from consumer.ops.metrics import Metrics
from consumer.pipeline.admit import Admitter
from consumer.pipeline.encode import Encoder
from consumer.pipeline.publish import Publisher, Topics
from consumer.settings import Settings
from consumer.shadow.runner import Candidate, Shadow, give_up


def candidate_settings(settings: Settings) -> Settings:
    """``settings`` as the candidate runs them; a ConfigError names a setting that cannot work."""
    share = settings.shadow_budget_share

    def part(limit: int | None) -> int | None:
        return None if limit is None else max(1, int(limit * share))

    candidate = settings.model_copy(
        update={
            "model": settings.shadow_model or settings.model,
            "policy_file": settings.shadow_policy_file or settings.policy_file,
            "prompt_file": settings.shadow_prompt_file or settings.prompt_file,
            "concurrency": max(1, int(settings.concurrency * share)),
            "rpm": part(settings.rpm),
            "tpm": part(settings.tpm),
            "batch_size": 1,
        }
    )
    try:
        # What production's settings checked at start-up, checked for the candidate's model.
        params = candidate.request_params
    except ValueError as exc:
        raise ConfigError(f"MODSTREAM_SHADOW_MODEL={candidate.model}: {exc}") from None
    if params.completion_budget >= candidate.context_window:
        raise ConfigError(
            f"MODSTREAM_SHADOW_MODEL={candidate.model}: its completion budget "
            f"({params.completion_budget}, with reasoning room) does not fit "
            f"MODSTREAM_CONTEXT_WINDOW ({candidate.context_window})"
        )
    return candidate


def candidate_stages(
    settings: Settings, client: AsyncOpenAI, chat: ChatSender | None
) -> tuple[Classifier, Admitter]:
    """The candidate's classifier and admitter; where a call would retry, it gives up."""
    return model_stages(candidate_settings(settings), client, Metrics(), chat, on_retry=give_up)


def shadow_stage(
    settings: Settings,
    candidate: tuple[Classifier, Admitter],
    producer: AIOKafkaProducer,
    *,
    production: Limiter,
    metrics: Metrics,
    inject: Callable[[list[tuple[str, bytes]]], None] | None = None,
    encoder: Encoder | None = None,
) -> Shadow:
    """The :class:`Shadow` for ``candidate`` (from :func:`candidate_stages`), publishing on
    ``producer`` (the plain one, also in exactly-once mode: shadow output is best-effort),
    with the input headers production carries and, with tracing on (``inject``), the context
    of the input's span, written as production's are (``encoder``)."""
    classifier, admitter = candidate
    topic = settings.effective_shadow_topic
    publisher = Publisher(
        producer,
        Topics(topic, f"{topic}.usage", dead_letters=""),
        carry=settings.carried_headers,
        inject=inject,
        encoder=encoder,
    )
    return Shadow(
        Candidate(classifier, admitter, publisher),
        share=settings.shadow_share,
        deadline_s=settings.shadow_deadline_s,
        drain_s=settings.commit_interval_s,
        # As many as production may hold: a burst of sampled verdicts waits for the candidate's
        # limiter (within the deadline) rather than being dropped.
        capacity=settings.max_in_flight,
        production=production,
        metrics=metrics,
    )
