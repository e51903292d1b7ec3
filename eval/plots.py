"""Bar charts of evaluation comparisons: one figure per suite, one horizontal bar subplot per metric.

matplotlib (the ``plot`` extra) is imported where it is used and drawn with the Agg canvas, never through
pyplot, so charts work on headless machines and leave the caller's backend alone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from unitok.eval.report import _atomic_path, best_labels, format_metric, metric_direction

_BAR = "#9fb7d4"
_BEST = "#d9822b"


def _draw_metric(ax, key: str, values: dict, labels: list[str]) -> None:
    """One horizontal bar per run; the best run highlighted; missing runs marked with a dash."""
    best = best_labels(key, values)
    ys = range(len(labels))
    widths = [float(values[lb]) if isinstance(values.get(lb), int | float) else math.nan for lb in labels]
    finite = [w if math.isfinite(w) else 0.0 for w in widths]
    colors = [_BEST if lb in best else _BAR for lb in labels]
    bars = ax.barh(list(ys), finite, color=colors, edgecolor=["black" if lb in best else "none" for lb in labels])
    texts = []
    for lb in labels:
        if lb not in values:
            texts.append("–")
        elif values[lb] is None or not math.isfinite(float(values[lb])):
            texts.append("NaN")
        else:
            texts.append(format_metric(key, values[lb]) + ("  (best)" if lb in best else ""))
    ax.bar_label(bars, labels=texts, padding=3, fontsize=8)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.margins(x=0.35)
    ax.axvline(0, color="black", linewidth=0.6)
    arrow = {"higher": "  (↑ better)", "lower": "  (↓ better)"}.get(metric_direction(key) or "", "")
    ax.set_title(key.split("/", 1)[1] + arrow, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)


def plot_comparison(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``compare_<suite>.png`` for every suite of a ``compare`` report; the paths written.

    Without matplotlib, prints one notice and writes nothing.
    """
    try:
        import matplotlib  # noqa: F401  (first: a missing package fails here, whatever submodules are cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: skipping the comparison charts (pip install 'unitok[plot]')")
        return []
    labels = [run["label"] for run in report["runs"]]
    by_suite: dict[str, list[str]] = {}
    for key in report["metrics"]:
        by_suite.setdefault(key.split("/", 1)[0], []).append(key)
    written = []
    for suite, keys in by_suite.items():
        ncols = min(3, len(keys))
        nrows = math.ceil(len(keys) / ncols)
        height = 0.9 + 0.32 * len(labels)
        fig = Figure(figsize=(4.6 * ncols, height * nrows + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        for ax, key in zip(axes, keys, strict=False):
            _draw_metric(ax, key, report["metrics"][key], labels)
        for ax in axes[len(keys) :]:
            ax.set_visible(False)
        fig.suptitle(suite, fontsize=11)
        path = Path(out_dir) / f"compare_{suite}.png"
        with _atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        written.append(path)
    return written
