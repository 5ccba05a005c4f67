"""modstream: a Kafka content-moderation stream processor.

The flow, one way: an input record is fetched (:mod:`consumer.pipeline.source`), decoded into
a request, admitted within the model's token budget, classified by the model
(:mod:`consumer.model`), and its verdict and usage event published; its offset is committed
once everything before it is done (:mod:`consumer.pipeline.offsets`).

What we promise: nothing lost (an offset is committed only after its outputs are
acknowledged, or, exactly-once, in the same transaction); nothing stuck (a bounded window,
poison detection, a circuit that always probes); bounded memory; transient errors are retried,
never dead-lettered; permanent ones become a dead letter with the reason.

Packages::

    pipeline   the stages a record passes through, and the Pipeline that runs them
    model      the classifier and its parts (tier, batch, limits, breaker, tokens, cost)
    kafka      the Kafka adapter: client options, start-up diagnosis, error translation, topics
    shadow     a candidate model, prompt or policy on a sampled share of live traffic
    ops        metrics, health, logs, tracing, the progress line and top, the --workers supervisor
    tools      replay, evaluate, report, sample and the verdict cache
    testing    the fake OpenAI-compatible server

At the top: ``settings`` (one pydantic-settings model, env prefix ``MODSTREAM_``), ``errors``
(our exception tree: transient or permanent), ``retry`` (backoff built only on a failure),
``app`` (the lifespan: every client built once and entered with ``async with``) and ``cli``.
"""

__version__ = "0.1.0"
