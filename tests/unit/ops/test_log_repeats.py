"""logs.RepeatFilter: a flood of one message (aiokafka's reconnect errors during a broker outage)
is one line per interval, and the next line says how many were left out.

The clock is injected: no test sleeps.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.ops.logs import RepeatFilter, configure_logging
from consumer.settings import LogFormat, Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


# ---- the filter on its own ---------------------------------------------------------------


def test_first_line_written_repeats_counted_and_reported_after_the_interval() -> None:
    clock = Clock()
    repeats = RepeatFilter(10.0, clock=clock)
    assert repeats.admit("a") == 0
    for _ in range(5):
        clock.now += 1
        assert repeats.admit("a") is None
    assert repeats.pending() == {"a": 5}
    clock.now += 5  # 10 s after the written line
    assert repeats.admit("a") == 5
    assert repeats.pending() == {}
    clock.now += 10
    assert repeats.admit("a") == 0, "nothing left out in between: no count"


def test_digits_do_not_make_a_different_message() -> None:
    repeats = RepeatFilter(10.0, clock=Clock())
    assert repeats.admit("Unable connect to node with id 1: 127.0.0.1:39092") == 0
    assert repeats.admit("Unable connect to node with id 2: 127.0.0.1:39093") is None
    assert repeats.admit("Unable to update metadata from [1]") == 0, "another message"


def test_zero_interval_writes_everything() -> None:
    repeats = RepeatFilter(0.0, clock=Clock())
    assert [repeats.admit("a") for _ in range(3)] == [0, 0, 0]


def test_memory_is_bounded_by_max_keys() -> None:
    repeats = RepeatFilter(10.0, clock=Clock(), max_keys=3)
    for word in ("a", "b", "c", "d"):
        assert repeats.admit(word) == 0
    assert repeats.admit("a") == 0, "the oldest message was forgotten"
    assert repeats.admit("d") is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=5.0), st.sampled_from(["x", "y", "z 1"])),
        max_size=200,
    ),
    st.floats(min_value=0.5, max_value=20.0),
)
def test_property_one_line_per_message_per_interval_and_counts_add_up(
    steps: list[tuple[float, str]], interval: float
) -> None:
    clock = Clock()
    repeats = RepeatFilter(interval, clock=clock)
    written: dict[str, list[float]] = {}
    reported: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for gap, message in steps:
        clock.now += gap  # time never goes backwards
        total[message] += 1
        repeated = repeats.admit(message)
        if repeated is not None:
            written.setdefault(message, []).append(clock.now)
            reported[message] += repeated
    for message, times in written.items():
        assert all(b - a >= interval for a, b in itertools.pairwise(times)), (
            f"{message}: two lines within {interval} s"
        )
    pending = repeats.pending()
    for message, n in total.items():
        key = RepeatFilter.normalise(message)
        assert len(written[message]) + reported[message] + pending.get(key, 0) == n


# ---- wired into configure_logging ----------------------------------------------------------


def test_aiokafka_flood_through_the_stdlib_path_is_one_line_then_a_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    configure_logging(Settings(log_format=LogFormat.JSON, log_repeat_interval_s=10), clock=clock)
    aiokafka = logging.getLogger("aiokafka")
    for i in range(1000):
        clock.now += 0.001
        aiokafka.error("Unable connect to node with id %s: %s", 1, f"refused #{i}")
        aiokafka.error("Unable to update metadata from %s", [1])
    logging.getLogger("aiokafka").warning("a different warning")
    clock.now += 10
    aiokafka.error("Unable connect to node with id %s: %s", 1, "refused again")
    written = lines(capsys.readouterr().err)
    events = [(line["event"], line.get("repeated")) for line in written]
    assert events == [
        ("Unable connect to node with id 1: refused #0", None),
        ("Unable to update metadata from [1]", None),
        ("a different warning", None),
        ("Unable connect to node with id 1: refused again", 999),
    ]
    assert written[-1]["logger"] == "aiokafka"


def test_structlog_warnings_collapse_info_lines_never(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    configure_logging(Settings(log_format=LogFormat.JSON, log_repeat_interval_s=10), clock=clock)
    log = structlog.get_logger("t")
    for offset in range(3):
        log.info("dead letter", offset=offset)  # a per-message record: every one is kept
        log.warning("commit failed; uncommitted work will be redelivered", error="x")
    clock.now += 11
    log.warning("commit failed; uncommitted work will be redelivered", error="y")
    written = [(line["event"], line.get("repeated")) for line in lines(capsys.readouterr().err)]
    commit = "commit failed; uncommitted work will be redelivered"
    assert written == [
        ("dead letter", None),
        (commit, None),
        ("dead letter", None),
        ("dead letter", None),
        (commit, 2),
    ]


def test_interval_zero_keeps_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format=LogFormat.JSON, log_repeat_interval_s=0))
    for _ in range(5):
        logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
    assert len(lines(capsys.readouterr().err)) == 5
