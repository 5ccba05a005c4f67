"""The ``modstream`` command line (typer).

Each command reads its settings once, turns a configuration error into one clear message and
exit code 2, and hands over to the module that does the work.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
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
) -> None:
    """Consume the input topic, classify, publish verdicts and usage, commit."""
    from consumer.app import run_consumer  # noqa: PLC0415  (keeps --help fast)

    settings = _settings()
    try:
        run_consumer(settings, exit_when_idle=exit_when_idle)
    except ConfigError as exc:
        _fail(exc, 2)
    except FatalError as exc:
        _fail(exc, 3)


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
) -> None:
    """Serve an OpenAI-compatible fake (NOT a model) for tests, the demo and benchmarks.

    Faults and latency are set by MODSTREAM_FAKE_* variables; see consumer/fake_openai.
    """
    from consumer.fake_openai.server import FakeConfig, serve  # noqa: PLC0415

    try:
        config = FakeConfig.from_env()
    except ConfigError as exc:
        _fail(exc, 2)
    serve(config, host=host, port=port)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(exc, 2)


@app.command()
def topics(
    partitions: Annotated[int, typer.Option(help="Partitions for new topics.")] = 6,
) -> None:
    """Create the input, verdict, usage and dead-letter topics that don't exist yet."""
    from consumer.topics import ensure_topics  # noqa: PLC0415

    created = asyncio.run(ensure_topics(_settings(), partitions=partitions))
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@app.command()
def sample(
    count: Annotated[int, typer.Option(help="Records to produce.")] = 200,
    seed: Annotated[int, typer.Option(help="Corpus seed.")] = 7,
) -> None:
    """Produce a mixed sample corpus (clean, harmful, poison) to the input topic."""
    from consumer.sample import corpus, produce  # noqa: PLC0415

    records = list(corpus(count, seed=seed))
    sent = asyncio.run(produce(_settings(), records))
    kinds = Counter(r.kind.split(":")[0] for r in records)
    typer.echo(f"produced {sent} records: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))


@app.command()
def report() -> None:
    """Summarise the verdict, usage and dead-letter topics (reads them from the start)."""
    from consumer.report import render, summarise  # noqa: PLC0415

    render(asyncio.run(summarise(_settings())))


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
