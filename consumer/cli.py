"""The ``modstream`` command line (typer).

Each command reads its settings once and hands over to the module that does the work. Every
command is registered with :func:`command`, which turns an error of modstream's tree into one
clear line on stderr and the error's exit code: 2 for a :class:`~consumer.errors.ConfigError`,
3 for every other fatal error, 1 for any other of ours; anything else is a bug and keeps its
traceback.

Each command imports the module that does its work when it runs: ``--help``, and every
``consume`` or ``fake-openai`` a test starts, would otherwise load all of them (the Kafka
client, rich, the fake server, the evaluation): measured, 1.5 s to start instead of 1.1 s.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec

import typer
import typer.core

from consumer import __version__
from consumer.errors import ConfigError, ModstreamError, first_fatal
from consumer.settings import Settings
from consumer.settings import load_settings as _read_settings

P = ParamSpec("P")

#: The commands in the order a user meets them, under the heading of ``--help`` they go in.
_PANELS = {
    "topics": "Run",
    "sample": "Run",
    "consume": "Run",
    "report": "Look",
    "top": "Look",
    "replay": "Evaluate",
    "eval": "Evaluate",
    "schema": "Develop",
    "fake-openai": "Develop",
}


def _flags_without_type(params: list[Any]) -> list[Any]:
    """An on/off flag takes no value: show no ``<bool>`` for it in ``--help``."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    """A command whose flags show no type in ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The parameters, flags without a type."""
        return _flags_without_type(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    """The command group: commands listed in the order of :data:`_PANELS`, flags as above."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The parameters, flags without a type."""
        return _flags_without_type(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        """The commands in the order a user meets them."""
        order = list(_PANELS)
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


app = typer.Typer(
    name="modstream",
    help="Kafka content-moderation stream processor.\n\nEvery setting is a MODSTREAM_* "
    "environment variable, listed with its default in the README's Configuration section.",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def load_settings(**overrides: object) -> Settings:
    """The settings (``MODSTREAM_*`` plus ``overrides``), with logging set up from them.

    Every command logs like ``consume`` does (level, format, secrets masked): a tool that
    left structlog unconfigured printed every debug line, through replay's progress bar too.
    """
    from consumer.ops.logs import configure_logging

    settings = _read_settings(**overrides)
    configure_logging(settings)
    return settings


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"modstream {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version, exit."
        ),
    ] = False,
) -> None:
    """Kafka content-moderation stream processor."""


def command(
    name: str | None = None,
) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Register a command of :data:`app` (``@app.command(name)``) whose errors of modstream's
    tree end the process with their ``exit_code`` and one red line on stderr."""

    def register(run: Callable[P, None]) -> Callable[P, None]:
        @functools.wraps(run)
        def exits(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                run(*args, **kwargs)
            except ModstreamError as exc:
                _exit(exc)
            except ExceptionGroup as group:  # a task group's (replay's): its fatal error
                fatal = first_fatal(group)
                if not isinstance(fatal, ModstreamError):
                    raise
                _exit(fatal)

        shown = name or run.__name__.replace("_", "-")
        app.command(name, cls=_Command, rich_help_panel=_PANELS.get(shown))(exits)
        return run

    return register


def _exit(exc: ModstreamError) -> NoReturn:
    typer.secho(f"modstream: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exc.exit_code) from None


@command()
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
    """Consume the input topic, classify, publish verdicts and usage, commit.

    Configured by MODSTREAM_* environment variables (Kafka, provider, model, delivery, limits):
    the README's Configuration section lists each with its default; a bad value, or an
    unknown MODSTREAM_ variable (a typo), stops the start with a line naming it.
    """
    from consumer.ops.workers import WorkerRole, supervise

    settings = load_settings() if workers is None else load_settings(workers=workers)
    role = WorkerRole.from_env()
    if role is None and settings.workers > 1:  # a supervisor: no Kafka or OpenAI clients
        raise typer.Exit(supervise(settings, exit_when_idle=exit_when_idle))
    from consumer.app import run_consumer

    run_consumer(settings, exit_when_idle=exit_when_idle, role=role)


@command()
def top(
    metrics_url: Annotated[
        str,
        typer.Option(help="A running consumer's operations port (MODSTREAM_METRICS_PORT)."),
    ] = "http://127.0.0.1:9400",
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame (two scrapes a second apart), exit.")
    ] = False,
) -> None:
    """Watch a running consumer: rate, lag per partition, in flight, circuit, retries, cost."""
    from consumer.ops.top import run_top

    run_top(metrics_url, once=once)


@command()
def schema(
    out: Annotated[Path, typer.Option(help="Directory to write them to.")] = Path("."),
) -> None:
    """Write the JSON Schema files of the event contracts (make schema: into schemas/json)."""
    from schemas.export import write_schema_files

    for path in write_schema_files(out):
        typer.echo(str(path))


@command("fake-openai")
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

    Faults and latency are set by MODSTREAM_FAKE_* variables (or PATCH /_fake/config while it
    runs), listed in the README's "The fake model" section.
    """
    from consumer.testing.fake_openai.server import FakeConfig, serve

    serve(FakeConfig.from_env(benchmark=benchmark or None), host=host, port=port)


@command()
def topics(
    partitions: Annotated[int, typer.Option(min=1, help="Partitions for new topics.")] = 6,
    replication_factor: Annotated[
        int, typer.Option(min=1, help="Replicas of each new topic (at most the brokers).")
    ] = 1,
) -> None:
    """Create the input, verdict, usage and dead-letter topics that don't exist yet."""
    from consumer.kafka.topics import ensure_topics

    done = asyncio.run(
        ensure_topics(load_settings(), partitions=partitions, replication_factor=replication_factor)
    )
    if done.created:
        typer.echo(f"created: {', '.join(done.created)}")
    if (problem := done.error()) is not None:
        raise problem
    if not done.created:
        typer.echo(f"all topics exist: {', '.join(done.existed)}")


@command()
def sample(
    count: Annotated[int, typer.Option(min=1, help="Records to produce.")] = 200,
    seed: Annotated[int, typer.Option(help="Corpus seed.")] = 7,
) -> None:
    """Produce a mixed sample corpus (clean, harmful, poison) to the input topic."""
    from consumer.tools.sample import corpus, produce

    settings = load_settings()
    done = asyncio.run(produce(settings, list(corpus(count, seed=seed))))
    kinds = Counter(r.kind.split(":")[0] for r in done.acknowledged)
    counts = ", ".join(f"{k} {n}" for k, n in kinds.items())
    typer.echo(f"produced {len(done.acknowledged)} records to {settings.input_topic}: {counts}")
    if done.error is not None:
        raise done.error


@command()
def report(
    verdicts: Annotated[
        str | None,
        typer.Option(
            help="Verdict topic; then --usage defaults to VERDICTS.usage, as `replay "
            "--to-topic` writes them (default: MODSTREAM_VERDICT_TOPIC).",
            show_default=False,
        ),
    ] = None,
    usage: Annotated[
        str | None,
        typer.Option(help="Usage topic ('' for none).", show_default=False),
    ] = None,
    dead_letters: Annotated[
        str | None,
        typer.Option(
            help="Dead-letter topic ('' for none; default: MODSTREAM_DLQ_TOPIC without "
            "--verdicts, else none).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Summarise the verdict, usage and dead-letter topics (reads them from the start)."""
    from consumer.tools.report import ReportTopics, render, summarise

    settings = load_settings()
    chosen = ReportTopics.choose(
        settings, verdicts=verdicts, usage=usage, dead_letters=dead_letters
    )
    render(asyncio.run(summarise(settings, chosen)))


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"not an ISO-8601 time: {text!r} (e.g. 2026-11-25T10:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@command()
def replay(
    topic: Annotated[str, typer.Option(help="Topic to replay.")],
    to_topic: Annotated[str, typer.Option(help="Evaluation topic for the verdicts.")],
    from_offset: Annotated[
        str | None,
        typer.Option(
            help="First offset: N for every partition, or P:N,P:N for those partitions only "
            "(what a stopped replay prints to resume)."
        ),
    ] = None,
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
    max_outage: Annotated[
        float,
        typer.Option(min=0.1, help="Stop when the model has been unreachable this many seconds."),
    ] = 60.0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Write to --to-topic even if it (or its .usage) is --topic or a service topic.",
        ),
    ] = False,
    batch_api: Annotated[
        bool,
        typer.Option(
            "--batch-api",
            help="Send the range as one OpenAI Batch API batch, at half the price; run again "
            "to resume waiting for it.",
        ),
    ] = False,
    batch_poll_s: Annotated[
        float, typer.Option(min=0.01, help="--batch-api: seconds between looks at the batch.")
    ] = 30.0,
) -> None:
    """Re-run a topic range through a candidate model, prompt or policy (no group offsets).

    Exit codes: 0 the whole range replayed; 2 a setting or option is wrong (a --to-topic
    that is a service topic, say); 3 fatal (the model unreachable for --max-outage seconds, a
    rejected key, a --batch-api batch that failed or expired); 4 stopped early by --max-cost
    (the summary says where to resume); 1 any other error.
    """
    from consumer.errors import FatalError
    from consumer.model.policy import prompt_file
    from consumer.tools.replay import STOPPED_EARLY_EXIT, ReplayRequest, parse_offsets, run_replay
    from consumer.tools.replay_outcome import StopReason
    from consumer.tools.replay_view import BatchProgressBar, ProgressBar, render_result

    overrides: dict[str, object] = {}
    if model:
        overrides["model"] = model
    if policy:
        overrides["policy_file"] = policy
    if prompt_version:
        overrides["prompt_file"] = prompt_file(prompt_version)
    settings = load_settings().model_copy(update=overrides)
    request = ReplayRequest(
        topic=topic,
        to_topic=to_topic,
        from_offset=parse_offsets(from_offset) if from_offset is not None else None,
        from_time=_when(from_time),
        to_offset=to_offset,
        to_time=_when(to_time),
        max_cost=max_cost,
        dry_run=dry_run,
        cache_topic=cache_topic or None,
        max_outage_s=max_outage,
        force=force,
        batch_api=batch_api,
        batch_poll_s=batch_poll_s,
    )
    replaying = run_replay(
        settings, request, progress=ProgressBar(), batch_progress=BatchProgressBar()
    )
    result = asyncio.run(replaying)
    render_result(result, request)
    if result.stopped is StopReason.MODEL_UNREACHABLE:
        raise FatalError(result.outage or "the model was unreachable")
    if result.stopped is StopReason.BUDGET:
        raise typer.Exit(STOPPED_EARLY_EXIT)


@command("eval")
def evaluate(
    verdicts: Annotated[list[str], typer.Option(help="Verdict topic (repeat to compare).")],
    labels: Annotated[
        str | None, typer.Option(help="metadata field holding the true categories.")
    ] = None,
    baseline: Annotated[str | None, typer.Option(help="Verdict topic to agree with.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.md and PNGs.")] = Path("eval-report"),
) -> None:
    """Score verdict topics against labels or a baseline; write a Markdown report and plots."""
    from consumer.tools.evaluate import run_eval

    asyncio.run(run_eval(load_settings(), verdicts, labels=labels, baseline=baseline, out=out))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
