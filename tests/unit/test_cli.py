"""The ``modstream`` command as a user runs it: a real process, real exit codes, real output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
import typer
from typer.testing import CliRunner

import consumer.cli as cli
from consumer import __version__
from consumer.cli import app
from consumer.errors import ProviderAuthError
from schemas.export import schema_files

ROOT = Path(__file__).resolve().parents[2]
MODSTREAM = Path(sys.executable).parent / "modstream"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("MODSTREAM_", "OPENAI_"))
    }
    # Nothing in these tests may reach a broker: point at a port where nothing listens.
    env["MODSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    env.update(extra)
    return env


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        env=_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_consumer_help_lists_the_commands() -> None:
    result = _run(sys.executable, "-m", "consumer", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("consume", "schema", "fake-openai"):
        assert command in result.stdout


def test_console_script_is_installed() -> None:
    result = _run(str(MODSTREAM), "--help")
    assert result.returncode == 0, result.stderr
    assert "consume" in result.stdout


def test_bad_setting_exits_2_naming_the_variable_without_traceback() -> None:
    result = _run(str(MODSTREAM), "consume", MODSTREAM_CONCURRENCY="abc")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "MODSTREAM_CONCURRENCY" in result.stderr
    assert "'abc'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_inconsistent_settings_exit_2_without_traceback() -> None:
    result = _run(
        str(MODSTREAM), "consume", MODSTREAM_CONCURRENCY="100", MODSTREAM_MAX_IN_FLIGHT="10"
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "cannot exceed MODSTREAM_MAX_IN_FLIGHT (10)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_misspelt_variable_stops_every_command_naming_the_one_it_meant() -> None:
    for command in ("consume", "topics", "report"):
        result = _run(str(MODSTREAM), command, MODSTREAM_CONCURENCY="5")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert (
            "MODSTREAM_CONCURENCY: unknown variable (did you mean MODSTREAM_CONCURRENCY?)"
            in result.stderr
        )
        assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_policy_or_prompt_file_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    # Told before any broker is reached: nothing listens on the bootstrap port here.
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: p1\ncategories:\n  - name: x\n    threshold: high\n")
    prompt = tmp_path / "prompt.yaml"
    prompt.write_text("system: [1\n")
    for variable, path, words in (
        ("MODSTREAM_POLICY_FILE", policy, "categories.0.threshold: Input should be a valid number"),
        ("MODSTREAM_PROMPT_FILE", prompt, "is not valid YAML: line 2, column 1: expected ','"),
    ):
        result = _run(
            str(MODSTREAM),
            "consume",
            **{variable: str(path)},
            MODSTREAM_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9",
            OPENAI_API_KEY="sk-test-unused",
        )
        assert result.returncode == 2, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(path) in lines[0]
        assert words in lines[0]
        assert "pydantic" not in lines[0]
        assert "Kafka" not in lines[0]


def test_secret_is_not_echoed_on_config_error() -> None:
    result = _run(
        str(MODSTREAM),
        "consume",
        MODSTREAM_CONCURRENCY="abc",
        OPENAI_API_KEY="sk-cli-secret-value",
        MODSTREAM_SASL_PASSWORD="pw-cli-secret-value",
    )
    assert result.returncode == 2
    assert "sk-cli-secret-value" not in result.stderr + result.stdout
    assert "pw-cli-secret-value" not in result.stderr + result.stdout


def test_schema_writes_the_json_and_avro_schema_files(tmp_path: Path) -> None:
    out = tmp_path / "json"
    result = _run(str(MODSTREAM), "schema", "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    expected = schema_files()
    assert written == sorted(expected)
    assert len(written) == 7  # four JSON Schemas, the three outputs' Avro schemas
    for name, text in expected.items():
        assert (out / name).read_text() == text
    # It prints the paths it wrote, one a line.
    printed = sorted(Path(line).relative_to(out).as_posix() for line in result.stdout.split())
    assert printed == written


def test_every_command_maps_modstream_errors_to_exit_codes() -> None:
    callbacks = {
        c.name or getattr(c.callback, "__name__", ""): c.callback for c in app.registered_commands
    }
    assert {"consume", "schema", "fake-openai", "topics", "sample", "report", "replay", "eval"} <= (
        set(callbacks)
    )
    assert all(getattr(cb, "__wrapped__", None) is not None for cb in callbacks.values())


def test_a_config_error_inside_a_tool_exits_2_with_one_line() -> None:
    # Raised while the Kafka client is built, not while the settings are read.
    result = _run(
        str(MODSTREAM),
        "topics",
        MODSTREAM_SECURITY_PROTOCOL="SSL",
        MODSTREAM_SSL_CAFILE="/nonexistent/ca.pem",
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("modstream: cannot set up TLS for Kafka")
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_option_value_exits_2_naming_it() -> None:
    result = _run(str(MODSTREAM), "replay", "--topic", "a", "--to-topic", "b", "--to-time", "soon")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "not an ISO-8601 time: 'soon'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_fatal_error_inside_a_task_group_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # replay runs its work in a task group: a 401 there is a group, not a ProviderAuthError.
    monkeypatch.setattr(cli, "app", typer.Typer())

    @cli.command("boom")
    def boom() -> None:
        raise ExceptionGroup("tasks", [ProviderAuthError("the provider rejected the key")])

    @cli.command("other")
    def other() -> None:
        raise ExceptionGroup("tasks", [ValueError("a bug")])

    runner = CliRunner()
    result = runner.invoke(cli.app, ["boom"])
    assert result.exit_code == ProviderAuthError.exit_code == 3
    assert "the provider rejected the key" in result.output
    bug = runner.invoke(cli.app, ["other"])
    assert isinstance(bug.exception, ExceptionGroup)  # not ours: the traceback stays


def test_version_prints_the_package_version() -> None:
    result = _run(str(MODSTREAM), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"modstream {__version__}"


@pytest.mark.parametrize(("command", "option"), [("topics", "--partitions"), ("sample", "--count")])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_count_below_one_is_refused_before_any_broker_is_asked(
    command: str, option: str, value: str
) -> None:
    # topics --partitions 0 used to print "created:" for topics that were not created, and
    # sample --count -1 exited 0 having produced nothing.
    result = _run(str(MODSTREAM), command, option, value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert option in result.stderr and "greater than or equal to 1" in result.stderr
    assert "created" not in result.stdout


def test_schema_writes_into_the_directory_it_runs_in_by_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(MODSTREAM), "schema"],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(written) == sorted(schema_files())


@pytest.mark.parametrize("command", [[], ["replay"], ["consume"], ["fake-openai"]])
def test_help_shows_no_type_for_on_off_flags(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def test_commands_are_listed_in_the_order_a_user_meets_them() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    shown = [name for name in cli._PANELS if f" {name} " in result.output]
    positions = [result.output.index(f" {name} ") for name in shown]
    assert shown[:3] == ["topics", "sample", "consume"]
    assert positions == sorted(positions)


def test_consume_help_says_where_the_settings_are_documented() -> None:
    result = CliRunner().invoke(app, ["consume", "--help"], terminal_width=200)
    assert "MODSTREAM_" in result.output
    assert "Configuration" in result.output


def test_fake_openai_help_points_at_the_readme_not_a_source_path() -> None:
    result = CliRunner().invoke(app, ["fake-openai", "--help"], terminal_width=200)
    assert "MODSTREAM_FAKE_" in result.output
    assert "README" in result.output
    assert "consumer/testing" not in result.output


def test_every_command_sets_up_logging_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    structlog.reset_defaults()
    monkeypatch.setenv("MODSTREAM_OPENAI_API_KEY", "sk-test-logging")
    monkeypatch.setenv("MODSTREAM_LOG_LEVEL", "WARNING")
    cli.load_settings()
    assert structlog.is_configured()
    # At WARNING, a debug line (replay's "model call failed, retrying") is filtered out.
    assert not structlog.get_logger().is_enabled_for(10)
    structlog.reset_defaults()
