"""PNG plots for ``modstream eval`` (matplotlib, imported only here and only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumer.errors import ConfigError
from schemas import Verdict


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'modstream[eval]'") from exc
    return plt


def confusion_matrix(counts: dict[tuple[str, str], int], path: Path, *, title: str) -> Path:
    """Rows: the labelled category (or clean); columns: the verdict's main category."""
    plt = _pyplot()
    names = sorted({t for t, _ in counts} | {p for _, p in counts}, key=lambda n: (n != "clean", n))
    grid = [[counts.get((t, p), 0) for p in names] for t in names]
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("verdict (highest flagged category)")
    ax.set_ylabel("label")
    ax.set_title(f"Confusion matrix: {title}")
    peak = max((max(row) for row in grid), default=0)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value:
                colour = "white" if value > peak / 2 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_histograms(verdicts: list[Verdict], path: Path, *, title: str) -> Path:
    """One histogram of scores per category (log-scaled counts: most scores are near 0)."""
    plt = _pyplot()
    names = sorted({n for v in verdicts for n in v.categories})
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        scores = [v.categories[name].score for v in verdicts if name in v.categories]
        ax.hist(scores, bins=20, range=(0, 1), color="#4C72B0")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"Score distribution per category: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
