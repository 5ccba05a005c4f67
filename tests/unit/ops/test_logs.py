"""logs: JSON lines or console, context per message, content hidden unless asked for, and no
secret in any line, whether structlog's or a third-party stdlib logger's."""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import pytest
import structlog
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    GroupAuthorizationFailedError,
    NodeNotReadyError,
)

from consumer.ops.logs import RetriedCoordinatorLookup, configure_logging
from consumer.settings import LogFormat, Settings

API_KEY = "sk-proj-RECOGNISABLE-api-key-0123456789"
SASL_PASSWORD = "sasl-RECOGNISABLE-password-42"
CONTENT = "a recognisable message text about zebras"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "modstream",
        "sasl_password": SASL_PASSWORD,
        "log_format": LogFormat.JSON,
        "log_level": "DEBUG",
    }
    return Settings(**(values | overrides))


def lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_with_level_time_and_logger_names(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())
    structlog.get_logger("t").info("consuming", topic="in", concurrency=4)
    logging.getLogger("aiokafka.consumer").warning("heartbeat failed for %s", "group-1")
    logging.getLogger("aiokafka.consumer").info("not shown: stdlib loggers are WARNING+")

    first, second = lines(capsys.readouterr().err)
    assert first["event"] == "consuming" and first["topic"] == "in" and first["concurrency"] == 4
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert second["event"] == "heartbeat failed for group-1"
    assert second["logger"] == "aiokafka.consumer" and second["level"] == "warning"


def test_python_warnings_are_log_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())
    assert warnings.showwarning.__module__ == "logging", "configure_logging captures warnings"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # after catch_warnings swapped showwarning in
        warnings.warn("a resource was not closed", RuntimeWarning, stacklevel=1)
    (line,) = lines(capsys.readouterr().err)
    assert line["logger"] == "py.warnings" and "a resource was not closed" in line["event"]


def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings(log_format=LogFormat.CONSOLE))
    structlog.get_logger("t").warning("intake paused", partitions=3)
    err = capsys.readouterr().err
    assert "intake paused" in err and "partitions" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings(log_level="WARNING"))
    log = structlog.get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert [e["event"] for e in lines(capsys.readouterr().err)] == ["shown"]


def test_context_bound_per_message_reaches_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())
    log = structlog.get_logger("t")
    with structlog.contextvars.bound_contextvars(partition=2, offset=41, event_id="abc123"):
        log.debug("model call failed, retrying", kind="rate_limited")
        logging.getLogger("openai").warning("retrying request")
    log.info("outside")
    inside_struct, inside_stdlib, outside = lines(capsys.readouterr().err)
    for line in (inside_struct, inside_stdlib):
        assert (line["partition"], line["offset"], line["event_id"]) == (2, 41, "abc123")
    assert "partition" not in outside


def test_content_is_hidden_unless_log_content(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings())
    log = structlog.get_logger("t")
    log.debug("classifying", content=CONTENT, text=CONTENT, context=CONTENT, reply=CONTENT)
    err = capsys.readouterr().err
    assert CONTENT not in err
    (line,) = lines(err)
    assert line["content"].startswith(f"[{len(CONTENT)} chars hidden")

    configure_logging(settings(log_content=True))
    structlog.get_logger("t2").debug("classifying", content=CONTENT)
    assert lines(capsys.readouterr().err)[0]["content"] == CONTENT


@pytest.mark.parametrize("log_format", [LogFormat.JSON, LogFormat.CONSOLE])
def test_no_secret_reaches_any_line(
    capsys: pytest.CaptureFixture[str], log_format: LogFormat
) -> None:
    configured = settings(log_format=log_format)
    configure_logging(configured)
    log = structlog.get_logger("t")
    # Secrets under innocent keys, under credential-looking keys, nested, in an exception's
    # message and traceback, in a bearer header, and through the stdlib loggers.
    log.info("options", detail=f"key={API_KEY}", nested={"sasl": [SASL_PASSWORD]})
    log.info("credentials", api_key=API_KEY, sasl_password=SASL_PASSWORD, token="t0ken")
    log.info("headers", headers={"Authorization": f"Bearer {API_KEY}"}, other="Bearer abc.def")
    log.info("settings", settings=configured, repr=repr(configured))
    try:
        raise RuntimeError(f"connect failed with password {SASL_PASSWORD}")
    except RuntimeError:
        log.exception("start failed")
        logging.getLogger("aiokafka").exception("sasl failed for %s", SASL_PASSWORD)
    logging.getLogger("openai").error("bad key %s", API_KEY)

    err = capsys.readouterr().err
    assert API_KEY not in err
    assert SASL_PASSWORD not in err
    assert "abc.def" not in err and "t0ken" not in err
    # The lines were written, with the secrets masked rather than the lines dropped.
    for event in ("options", "credentials", "headers", "settings", "start failed", "bad key"):
        assert event in err
    assert err.count("**********") >= 8
    assert "RuntimeError" in err, "the traceback itself is kept"


def test_short_secrets_are_not_masked_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    # An API key of "x" (a local server needing none) must not shred every x in the log.
    configure_logging(settings(openai_api_key="x"))
    structlog.get_logger("t").info("max_in_flight exceeded")
    assert lines(capsys.readouterr().err)[0]["event"] == "max_in_flight exceeded"


def _coordinator_record(error: Exception) -> logging.LogRecord:
    return logging.LogRecord(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        __file__,
        1,
        "Group Coordinator Request failed: %s",
        (error,),
        None,
    )


@pytest.mark.parametrize(
    ("level", "shown"), [(logging.WARNING, False), (logging.INFO, True), (logging.DEBUG, True)]
)
def test_a_retried_coordinator_lookup_is_info_not_an_error(level: int, shown: bool) -> None:
    record = _coordinator_record(CoordinatorNotAvailableError())
    assert RetriedCoordinatorLookup(level).filter(record) is shown
    assert record.levelname == "INFO"


@pytest.mark.parametrize(("level", "shown"), [(logging.WARNING, False), (logging.INFO, True)])
def test_marking_the_coordinator_dead_is_info_its_cause_has_its_own_line(
    level: int, shown: bool
) -> None:
    # As aiokafka logs it on a fresh broker's first join (make demo printed it at WARNING).
    record = logging.LogRecord(
        "aiokafka.consumer.group_coordinator",
        logging.WARNING,
        __file__,
        1,
        "Marking the coordinator dead (node %s)for group %s.",
        (1, "demo"),
        None,
    )
    assert RetriedCoordinatorLookup(level).filter(record) is shown
    assert record.levelname == "INFO"


def test_a_coordinator_failure_aiokafka_gives_up_on_stays_an_error() -> None:
    for error in (GroupAuthorizationFailedError(), NodeNotReadyError()):  # NodeNotReady: an outage
        record = _coordinator_record(error)
        assert RetriedCoordinatorLookup(logging.WARNING).filter(record) is True
        assert record.levelname == "ERROR"
    other = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Other failure", (), None)
    assert RetriedCoordinatorLookup(logging.WARNING).filter(other) is True
