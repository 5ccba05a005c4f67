"""Score replayed verdicts: against labels carried in the inputs, or against a baseline run.

``modstream eval --verdicts E [--verdicts E2 ...] [--labels FIELD | --baseline TOPIC]`` reads
each verdict topic (and its ``<topic>.usage``), and reports side by side: per-category
precision, recall and F1 (labels), or agreement and Cohen's kappa (baseline); latency
percentiles; tokens and cost per 1,000 messages. It writes ``report.md`` and PNG plots (a
confusion matrix and score histograms per category) to a folder, and prints a summary table.

Labels: the verdict carries the input's ``metadata``; ``metadata[FIELD]`` names the true
categories (``"violence"``, ``"harmful:violence"``, ``"hate,violence"``) or ``"clean"``.
Categories are compared at their top level (``violence/graphic`` counts as ``violence``).
The metrics are written out here (they are a few lines each) and tested against scikit-learn.
Each input counts once (its last verdict; a topic replayed into twice holds two) and each model
call once (by ``event_id``); a ``--labels`` field no verdict carries is an error, and so is a
``--verdicts`` or ``--baseline`` topic that does not exist (named before anything is read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from consumer.errors import ConfigError
from consumer.kafka.client import kafka_options
from consumer.kafka.topics import require_topics
from consumer.settings import Settings
from consumer.tools.report import OPTION_HINT, read_events
from schemas import UsageEvent, Verdict
from schemas.events import JsonScalar

CLEAN = "clean"
_CLEAN_WORDS = {"", "clean", "none", "safe", "ok"}


@dataclass(frozen=True)
class Scores:
    """Binary classification scores for one category."""

    precision: float
    recall: float
    f1: float
    support: int  # true positives + false negatives


def binary_scores(truth: Sequence[bool], predicted: Sequence[bool]) -> Scores:
    """Precision, recall and F1 of ``predicted`` against ``truth`` (0 where undefined)."""
    tp = sum(t and p for t, p in zip(truth, predicted, strict=True))
    fp = sum(p and not t for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and not p for t, p in zip(truth, predicted, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(precision, recall, f1, tp + fn)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa between two raters' labels (1.0 when both agree on a single label)."""
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((a.count(label) / n) * (b.count(label) / n) for label in labels)
    return 1.0 if expected == 1.0 else (observed - expected) / (1 - expected)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def top(category: str) -> str:
    """``violence/graphic`` -> ``violence``."""
    return category.split("/", maxsplit=1)[0]


def label_categories(value: JsonScalar) -> set[str] | None:
    """The true top-level categories a label names; ``None`` when the input has no label."""
    if value is None or isinstance(value, bool | int | float):
        return None
    text = value.strip().lower().removeprefix("harmful:")
    if text in _CLEAN_WORDS:
        return set()
    return {top(part.strip()) for part in text.split(",") if part.strip()}


def predicted_categories(verdict: Verdict) -> set[str]:
    """The top-level categories a verdict flagged."""
    return {top(name) for name, c in verdict.categories.items() if c.flagged}


def main_category(verdict: Verdict) -> str:
    """The highest-scoring flagged top-level category, or ``clean``."""
    flagged = [(c.score, name) for name, c in verdict.categories.items() if c.flagged]
    return top(max(flagged)[1]) if flagged else CLEAN


@dataclass
class RunReport:
    """One verdict topic's evaluation."""

    name: str
    verdicts: int
    labelled: int = 0
    flagged: Scores | None = None
    categories: dict[str, Scores] = field(default_factory=dict)
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)
    agreement: float | None = None
    kappa: float | None = None
    category_kappa: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    tokens_per_1k: float | None = None
    cost_per_1k: float | None = None
    cache_hits: int = 0
    duplicates: int = 0


def latest_per_input(verdicts: list[Verdict]) -> tuple[list[Verdict], int]:
    """One verdict per input (source topic, partition, offset), the last read winning; and
    how many were dropped. A verdict topic replayed into twice holds each input twice: scored
    as they stand, support and cost per message would count them twice."""
    latest = {(v.source.topic, v.source.partition, v.source.offset): v for v in verdicts}
    return list(latest.values()), len(verdicts) - len(latest)


def distinct_calls(usage: list[UsageEvent]) -> list[UsageEvent]:
    """One usage event per model call (``event_id``): a re-published event counts once."""
    return list({u.event_id: u for u in usage}.values())


def check_label_field(verdicts: list[Verdict], field_name: str) -> None:
    """A ``--labels`` field no verdict carries is a typo, not a run without labels."""
    seen = {key for v in verdicts for key in v.metadata}
    if field_name not in seen:
        keys = ", ".join(sorted(seen)) or "none"
        raise ConfigError(
            f"no verdict carries metadata[{field_name!r}]; the metadata keys seen: {keys}"
        )


def evaluate_labels(report: RunReport, verdicts: list[Verdict], field_name: str) -> None:
    """Fill ``report`` with label-based scores."""
    rows = [(v, label_categories(v.metadata.get(field_name))) for v in verdicts]
    labelled = [(v, truth) for v, truth in rows if truth is not None]
    report.labelled = len(labelled)
    if not labelled:
        return
    report.flagged = binary_scores([bool(t) for _, t in labelled], [v.flagged for v, _ in labelled])
    names = sorted({top(n) for v, _ in labelled for n in v.categories})
    for name in names:
        is_true = [name in t for _, t in labelled]
        is_predicted = [name in predicted_categories(v) for v, _ in labelled]
        report.categories[name] = binary_scores(is_true, is_predicted)
    for v, categories in labelled:
        true_class = min(categories) if categories else CLEAN
        key = (true_class, main_category(v))
        report.confusion[key] = report.confusion.get(key, 0) + 1


def evaluate_baseline(report: RunReport, verdicts: list[Verdict], baseline: list[Verdict]) -> None:
    """Fill ``report`` with agreement against ``baseline``, joined on the input offset."""
    base = {(b.source.topic, b.source.partition, b.source.offset): b for b in baseline}
    pairs = [
        (v, base[k])
        for v in verdicts
        if (k := (v.source.topic, v.source.partition, v.source.offset)) in base
    ]
    if not pairs:
        return
    ours, theirs = [v.action.value for v, _ in pairs], [b.action.value for _, b in pairs]
    report.agreement = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(pairs)
    report.kappa = cohen_kappa(ours, theirs)
    for name in sorted({top(n) for v, _ in pairs for n in v.categories}):
        a = [str(name in predicted_categories(v)) for v, _ in pairs]
        b = [str(name in predicted_categories(w)) for _, w in pairs]
        report.category_kappa[name] = cohen_kappa(a, b)


def evaluate_run(
    name: str,
    verdicts: list[Verdict],
    usage: list[UsageEvent],
    *,
    labels: str | None = None,
    baseline: list[Verdict] | None = None,
) -> RunReport:
    """Everything ``eval`` reports for one verdict topic, one verdict per input."""
    verdicts, duplicates = latest_per_input(verdicts)
    usage = distinct_calls(usage)
    report = RunReport(name=name, verdicts=len(verdicts), duplicates=duplicates)
    report.cache_hits = sum(v.cache_hit for v in verdicts)
    live = [v.latency_ms for v in verdicts if not v.cache_hit]
    report.latency_ms = {f"p{q}": percentile(live, q) for q in (50, 90, 99)}
    if verdicts and usage:
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage)
        report.tokens_per_1k = 1000 * tokens / len(verdicts)
        report.cost_per_1k = 1000 * sum(u.cost_usd or 0.0 for u in usage) / len(verdicts)
    if labels:
        evaluate_labels(report, verdicts, labels)
    if baseline is not None:
        evaluate_baseline(report, verdicts, baseline)
    return report


def _f(value: float | None, fmt: str = ".3f") -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, fmt)
    )


def summary_rows(reports: list[RunReport]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: one row per figure, one column per run."""
    rows: list[tuple[str, list[str]]] = [
        ("verdicts", [f"{r.verdicts:,}" for r in reports]),
        ("cache hits", [f"{r.cache_hits:,}" for r in reports]),
    ]
    if any(r.duplicates for r in reports):
        rows.insert(1, ("repeats dropped", [f"{r.duplicates:,}" for r in reports]))
    if any(r.flagged for r in reports):
        rows.append(("labelled", [f"{r.labelled:,}" for r in reports]))
        for metric in ("precision", "recall", "f1"):
            rows.append(
                (f"flagged {metric}", [_f(getattr(r.flagged, metric, None)) for r in reports])
            )
        names = sorted({n for r in reports for n in r.categories})
        for name in names:
            rows.append(
                (
                    f"{name} F1",
                    [_f(r.categories[name].f1) if name in r.categories else "–" for r in reports],
                )
            )
    if any(r.agreement is not None for r in reports):
        rows.append(("agreement (action)", [_f(r.agreement) for r in reports]))
        rows.append(("Cohen's kappa (action)", [_f(r.kappa) for r in reports]))
    for q in ("p50", "p90", "p99"):
        rows.append((f"latency {q} (ms)", [_f(r.latency_ms.get(q), ".0f") for r in reports]))
    rows.append(("tokens / 1k msgs", [_f(r.tokens_per_1k, ",.0f") for r in reports]))
    rows.append(("cost / 1k msgs (USD)", [_f(r.cost_per_1k, ".4f") for r in reports]))
    return rows


def print_summary(reports: list[RunReport], console: Console | None = None) -> None:
    """The summary table on the terminal."""
    table = Table(title="Evaluation")
    table.add_column("")
    for r in reports:
        table.add_column(r.name, justify="right")
    for name, values in summary_rows(reports):
        table.add_row(name, *values)
    (console or Console()).print(table)


def write_report(
    reports: list[RunReport], verdicts: dict[str, list[Verdict]], folder: Path
) -> Path:
    """``report.md`` and the PNG plots; returns the report's path."""
    from consumer.tools import plots  # noqa: PLC0415  (matplotlib is imported only when writing)

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# modstream evaluation", "", "| | " + " | ".join(r.name for r in reports) + " |"]
    lines.append("|---|" + "---:|" * len(reports))
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in summary_rows(reports)]
    for i, r in enumerate(reports):
        lines += ["", f"## {r.name}", ""]
        if r.confusion:
            image = plots.confusion_matrix(r.confusion, folder / f"confusion-{i}.png", title=r.name)
            lines.append(f"![confusion matrix]({image.name})")
        image = plots.score_histograms(verdicts[r.name], folder / f"scores-{i}.png", title=r.name)
        lines.append(f"![score histograms]({image.name})")
        if r.categories:
            lines += [
                "",
                "| category | precision | recall | F1 | support |",
                "|---|---:|---:|---:|---:|",
            ]
            for name, s in r.categories.items():
                lines.append(
                    f"| {name} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} | {s.support} |"
                )
        if r.category_kappa:
            lines += ["", "| category | Cohen's kappa (flagged) |", "|---|---:|"]
            lines += [f"| {name} | {_f(k)} |" for name, k in r.category_kappa.items()]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_eval(
    settings: Settings,
    topics: list[str],
    *,
    labels: str | None,
    baseline: str | None,
    out: Path,
    console: Console | None = None,
) -> list[RunReport]:
    """Read each verdict topic (and its usage topic), evaluate, print and write the report.

    Every ``--verdicts`` and ``--baseline`` topic must exist (checked first, named in the shared
    words of :func:`~consumer.kafka.topics.missing_topics`); a usage topic may be missing.
    """
    if not topics:
        raise ConfigError("give at least one --verdicts topic")
    named = [("--verdicts", t) for t in topics] + ([("--baseline", baseline)] if baseline else [])
    await require_topics(kafka_options(settings), named, hint=OPTION_HINT)
    base = await read_events(settings, baseline, Verdict) if baseline else None
    reports, verdicts = [], {}
    for topic in topics:
        found = await read_events(settings, topic, Verdict)
        if not found:
            raise ConfigError(
                f"no verdicts in {topic} (--verdicts); "
                f"`modstream replay --to-topic {topic}` writes them"
            )
        if labels:
            check_label_field(found, labels)
        usage = await read_events(settings, f"{topic}.usage", UsageEvent)
        reports.append(evaluate_run(topic, found, usage, labels=labels, baseline=base))
        verdicts[topic] = found
    print_summary(reports, console)
    path = write_report(reports, verdicts, out)
    (console or Console()).print(f"report: {path}")
    return reports
