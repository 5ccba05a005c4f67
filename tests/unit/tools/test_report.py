"""consumer.tools.report: which topics a report reads, and how it shows what it read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from consumer.settings import load_settings
from consumer.tools.report import REASON_WIDTH, ReportTopics, Source, Summary, render, shorten
from schemas import DeadLetter
from schemas import Source as Input

# ---- ReportTopics.choose --------------------------------------------------------------------


def test_by_default_the_services_three_topics_named_by_their_variables() -> None:
    settings = load_settings()
    chosen = ReportTopics.choose(settings)
    assert chosen == ReportTopics(
        Source(settings.verdict_topic, "MODSTREAM_VERDICT_TOPIC"),
        Source(settings.usage_topic, "MODSTREAM_USAGE_TOPIC"),
        Source(settings.dlq_topic, "MODSTREAM_DLQ_TOPIC"),
    )


def test_verdicts_alone_reads_what_a_replay_writes() -> None:
    chosen = ReportTopics.choose(load_settings(), verdicts="eval.a")
    assert [s.topic for s in chosen.sources()] == ["eval.a", "eval.a.usage"]
    assert chosen.dead_letters is None


def test_each_option_overrides_and_an_empty_one_reads_nothing() -> None:
    settings = load_settings()
    chosen = ReportTopics.choose(settings, verdicts="v", usage="", dead_letters="d")
    assert chosen == ReportTopics(Source("v", "--verdicts"), None, Source("d", "--dead-letters"))
    only_usage = ReportTopics.choose(settings, verdicts="", usage="u")
    assert only_usage.sources() == [Source("u", "--usage")]


# ---- shorten --------------------------------------------------------------------------------


def test_a_short_reason_is_kept_on_one_line() -> None:
    assert shorten("bad\n  json") == "bad json"


def test_a_long_reason_is_cut_at_a_word_with_an_ellipsis() -> None:
    reason = " ".join(f"word{i}" for i in range(60))
    short = shorten(reason)
    assert len(short) <= REASON_WIDTH
    assert short.endswith(" …")
    kept = short.removesuffix(" …").split(" ")
    assert kept == reason.split(" ")[: len(kept)]  # whole words only


def test_one_word_longer_than_the_width_is_cut_with_an_ellipsis() -> None:
    assert shorten("x" * 300) == "x" * (REASON_WIDTH - 1) + "…"


# ---- render ---------------------------------------------------------------------------------


def _dead_letter(reason: str) -> DeadLetter:
    return DeadLetter(
        event_id="e1",
        source=Input(topic="in", partition=0, offset=7),
        stage="decode",
        error_class="DecodeError",
        error_message=reason,
        attempts=1,
        payload_b64=None,
        payload_sha256="0" * 64,
        created_at=datetime.now(UTC),
    )


def _rendered(summary: Summary) -> str:
    console = Console(record=True, width=200)
    render(summary, console)
    return console.export_text()


def test_only_the_tables_of_the_topics_read_are_shown_and_the_topics_named() -> None:
    read = ReportTopics.choose(load_settings(), verdicts="eval.a")
    text = _rendered(Summary(read=read))
    assert "read eval.a, eval.a.usage" in text
    assert "Verdicts (0)" in text and "Model calls (0)" in text
    assert "Dead letters" not in text


@pytest.mark.parametrize("words", [30, 60])
def test_a_dead_letter_reason_is_never_cut_mid_word(words: int) -> None:
    reason = "cut: " + " ".join(f"because{i}" for i in range(words))  # 100 is mid-word
    text = _rendered(Summary(dead_letters=[_dead_letter(reason)]))
    shown = next(line for line in text.splitlines() if "because0" in line)
    cells = [c.strip() for c in shown.split("│")]
    [cell] = [c for c in cells if c.startswith("cut: because0")]
    words_shown = cell.removeprefix("cut: ").removesuffix(" …").split()
    assert all(w.startswith("because") and w[7:].isdigit() for w in words_shown)
