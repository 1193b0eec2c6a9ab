"""The PNG charts of a compare: quality against trainable parameters and against peak memory, and speed per row."""

from __future__ import annotations

import math
from pathlib import Path

from peftkit.compare.report import PRIMARY, Row, rank

CHARTS = ("quality_vs_params.png", "quality_vs_memory.png", "throughput.png")


def charts(rows: list[Row], task: str, folder: Path) -> list[Path]:
    """Draw the three charts into `folder`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    metric, _ = PRIMARY[task]
    params = [r.trainable_params for r in rows]
    memory = [r.peak_bytes.mean / 2**20 for r in rows]
    return [
        _quality(rows, metric, params, "trainable parameters", log=True, path=folder / CHARTS[0]),
        _quality(rows, metric, memory, "peak memory (MB)", log=False, path=folder / CHARTS[1]),
        _speed(rank(rows, task), folder / CHARTS[2]),
    ]


def _quality(rows: list[Row], metric: str, xs: list[float], xlabel: str, *, log: bool, path: Path) -> Path:
    """`metric` (mean, 95% CI) of each row against `xs`; baselines drawn as squares."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r, x in zip(rows, xs):
        y = r.metrics[metric]
        ax.errorbar(x, y.mean, yerr=_err(y.ci95), fmt="s" if r.baseline else "o", capsize=3)
        ax.annotate(r.name, (x, y.mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _speed(ordered: list[Row], path: Path) -> Path:
    """Training samples/s and inference rows/s per row, best row on top; baselines in grey."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, attr, label in (
        (axes[0], "samples_per_second", "training samples/s"),
        (axes[1], "throughput_rows_per_second", "inference rows/s"),
    ):
        ax.barh(
            [r.name for r in ordered],
            [getattr(r, attr).mean for r in ordered],
            xerr=[_err(getattr(r, attr).ci95) for r in ordered],
            color=["grey" if r.baseline else "tab:blue" for r in ordered],
        )
        ax.invert_yaxis()
        ax.set_xlabel(label)
    return _save(fig, path)


def _err(ci95: float) -> float:
    return 0 if math.isnan(ci95) else ci95


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
