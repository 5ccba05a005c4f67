"""modstream's OpenAI-compatible FAKE server. It is NOT a model.

``modstream fake-openai`` serves ``/v1/chat/completions`` (plain text, ``json_object`` and
strict ``json_schema`` replies, or an instance of a schema the system prompt states),
``/v1/moderations`` and ``/v1/models`` over real HTTP, with verdicts from a keyword heuristic
(:mod:`.heuristic`; images scored from a hash, :mod:`.images`), OpenAI-style usage and
rate-limit headers, and injectable latency and faults (:class:`FakeConfig`,
``MODSTREAM_FAKE_*``), and the Files and Batches API (``/v1/files``, ``/v1/batches``)
answering each batch line as those endpoints answer it. Tests, the demo and the benchmarks use
it; nothing here reaches OpenAI. Benchmark mode (``MODSTREAM_FAKE_BENCHMARK=1``, :mod:`.bench`)
answers the same API but batches at a fraction of the CPU, without faults or a request log.

Modules, in the order a request meets them::

    config         FakeConfig: the knobs (env MODSTREAM_FAKE_*, PATCH /_fake/config)
    app            the /v1 handlers and build_app()
    rules          the models served and the 4xx a chat request's shape earns (both servers)
    state          Knobs (dice, buckets, PATCH, 429s; both servers), FakeState, the request steps
    faults         the fault draw, latency, retry-after headers, OpenAI error bodies
    ratelimit      RPM/TPM buckets with refunds and x-ratelimit-* headers
    reasoning      a reasoning model's parameter rules (OpenAI's 400s) and reasoning tokens
    usage          prompt/completion token counts and the simulated prefix cache
    reply          reply content per response_format, its malformed kinds, the OpenAI bodies
    instances      JSON Schema instance generator (moderation-flavoured values)
    values         its leaf values: numbers, booleans, strings, enums
    heuristic      keyword scores per moderation category (deterministic per content)
    images         image parts: scores from a hash (the ``harmful`` marker), tile-rule tokens
    stats          counters and the request log behind /_fake/stats and /_fake/requests
    batch_routes   the /v1/files and /v1/batches routes
    files          the Files API's store: uploads and the files batches write
    batch_input    a batch input file read and validated (OpenAI's line errors)
    batches        the Batches API's store and status clock (batch_delay_s)
    batch_output   a finished batch's output and error lines, shuffled, and its usage
    admin_routes   the /_fake/* routes
    admin          FakeAdmin, the test-side client of /_fake/*
    bench          benchmark mode's routes: answers from a plan, estimated usage, counters
    plans          benchmark mode's per-shape reply plans, built once and cached
    lean_http      benchmark mode's HTTP/1.1 server on asyncio Protocols, its routes
    lean_wire      its requests read from bytes and responses written as bytes
    server         serve() for the CLI, running_fake() for in-process use
    loadtest       python -m consumer.testing.fake_openai.loadtest: how fast a running fake answers
"""

from consumer.testing.fake_openai.admin import FakeAdmin
from consumer.testing.fake_openai.config import FakeConfig
from consumer.testing.fake_openai.server import running_fake, serve

__all__ = ["FakeAdmin", "FakeConfig", "running_fake", "serve"]
