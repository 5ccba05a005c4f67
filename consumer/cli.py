"""The ``modstream`` command line (typer).

Each command reads its settings once, turns a configuration error into one clear message and
exit code 2, and hands over to the module that does the work.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from consumer.errors import ConfigError, FatalError
from consumer.settings import Settings, load_settings

app = typer.Typer(
    name="modstream",
    help="Kafka content-moderation stream processor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(exc: Exception, code: int) -> NoReturn:
    typer.secho(f"modstream: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def consume(
    exit_when_idle: Annotated[
        float | None,
        typer.Option(help="Exit 0 once nothing arrived and nothing is in flight for SECONDS."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Consumer processes in the group under one supervisor (overrides "
            "MODSTREAM_WORKERS, default 1).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Consume the input topic, classify, publish verdicts and usage, commit."""
    from consumer.ops.workers import WorkerRole, supervise  # noqa: PLC0415  (keeps --help fast)

    settings = _settings() if workers is None else _settings(workers=workers)
    try:
        role = WorkerRole.from_env()
        if role is None and settings.workers > 1:  # a supervisor: no Kafka or OpenAI clients
            raise typer.Exit(supervise(settings, exit_when_idle=exit_when_idle))
        from consumer.app import run_consumer  # noqa: PLC0415

        run_consumer(settings, exit_when_idle=exit_when_idle, role=role)
    except FatalError as exc:  # ConfigError exits 2, every other fatal error 3
        _fail(exc, exc.exit_code)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="Directory (default: schemas/json).")] = None,
) -> None:
    """Write the JSON Schema files of the event contracts."""
    from schemas.export import JSON_DIR, write_schema_files  # noqa: PLC0415

    for path in write_schema_files(out or JSON_DIR):
        typer.echo(str(path))


@app.command("fake-openai")
def fake_openai(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1.")] = 8400,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    benchmark: Annotated[
        bool,
        typer.Option(
            "--benchmark",
            help="Benchmark mode (as MODSTREAM_FAKE_BENCHMARK=1): the lean server, cached "
            "reply plans, estimated usage, no faults, no request log.",
        ),
    ] = False,
) -> None:
    """Serve an OpenAI-compatible fake (NOT a model) for tests, the demo and benchmarks.

    Faults and latency are set by MODSTREAM_FAKE_* variables; see consumer/testing/fake_openai.
    """
    from consumer.testing.fake_openai.server import FakeConfig, serve  # noqa: PLC0415

    try:
        config = FakeConfig.from_env(benchmark=benchmark or None)
    except ConfigError as exc:
        _fail(exc, 2)
    try:
        serve(config, host=host, port=port)
    except ConfigError as exc:
        _fail(exc, 2)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        _fail(exc, 2)


@app.command()
def topics(
    partitions: Annotated[int, typer.Option(help="Partitions for new topics.")] = 6,
) -> None:
    """Create the input, verdict, usage and dead-letter topics that don't exist yet."""
    from consumer.kafka.topics import ensure_topics  # noqa: PLC0415

    created = asyncio.run(ensure_topics(_settings(), partitions=partitions))
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@app.command()
def sample(
    count: Annotated[int, typer.Option(help="Records to produce.")] = 200,
    seed: Annotated[int, typer.Option(help="Corpus seed.")] = 7,
) -> None:
    """Produce a mixed sample corpus (clean, harmful, poison) to the input topic."""
    from consumer.tools.sample import corpus, produce  # noqa: PLC0415

    records = list(corpus(count, seed=seed))
    sent = asyncio.run(produce(_settings(), records))
    kinds = Counter(r.kind.split(":")[0] for r in records)
    typer.echo(f"produced {sent} records: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


@app.command()
def report() -> None:
    """Summarise the verdict, usage and dead-letter topics (reads them from the start)."""
    from consumer.tools.report import render, summarise  # noqa: PLC0415

    render(asyncio.run(summarise(_settings())))


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(ConfigError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-25T10:00:00Z)"), 2)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def replay(
    topic: Annotated[str, typer.Option(help="Topic to replay.")],
    to_topic: Annotated[str, typer.Option(help="Evaluation topic for the verdicts.")],
    from_offset: Annotated[int | None, typer.Option(help="First offset, every partition.")] = None,
    from_time: Annotated[str | None, typer.Option(help="First record time (ISO-8601).")] = None,
    to_offset: Annotated[int | None, typer.Option(help="End offset (exclusive).")] = None,
    to_time: Annotated[str | None, typer.Option(help="End time (ISO-8601, exclusive).")] = None,
    model: Annotated[str | None, typer.Option(help="Candidate model.")] = None,
    prompt_version: Annotated[
        str | None, typer.Option(help="Built-in prompt version, or a prompt YAML path.")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Candidate policy YAML.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Stop before spending more USD.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Estimate tokens and cost; no model call.")] = False,
    cache_topic: Annotated[
        str, typer.Option(help="Compacted topic holding the verdict cache ('' for none).")
    ] = "modstream.verdict-cache",
) -> None:
    """Re-run a topic range through a candidate model, prompt or policy (no group offsets)."""
    from consumer.model.policy import prompt_file  # noqa: PLC0415
    from consumer.tools.replay import ReplayRequest, run_replay  # noqa: PLC0415
    from consumer.tools.replay_view import ProgressBar, render_result  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if model:
        overrides["model"] = model
    if policy:
        overrides["policy_file"] = policy
    try:
        if prompt_version:
            overrides["prompt_file"] = prompt_file(prompt_version)
        settings = _settings().model_copy(update=overrides)
        request = ReplayRequest(
            topic=topic,
            to_topic=to_topic,
            from_offset=from_offset,
            from_time=_when(from_time),
            to_offset=to_offset,
            to_time=_when(to_time),
            max_cost=max_cost,
            dry_run=dry_run,
            cache_topic=cache_topic or None,
        )
        result = asyncio.run(run_replay(settings, request, progress=ProgressBar()))
    except FatalError as exc:  # ConfigError exits 2, every other fatal error 3
        _fail(exc, exc.exit_code)
    render_result(result, request)


@app.command("eval")
def evaluate(
    verdicts: Annotated[list[str], typer.Option(help="Verdict topic (repeat to compare).")],
    labels: Annotated[
        str | None, typer.Option(help="metadata field holding the true categories.")
    ] = None,
    baseline: Annotated[str | None, typer.Option(help="Verdict topic to agree with.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.md and PNGs.")] = Path("eval-report"),
) -> None:
    """Score verdict topics against labels or a baseline; write a Markdown report and plots."""
    from consumer.tools.evaluate import run_eval  # noqa: PLC0415

    try:
        asyncio.run(run_eval(_settings(), verdicts, labels=labels, baseline=baseline, out=out))
    except ConfigError as exc:
        _fail(exc, 2)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
