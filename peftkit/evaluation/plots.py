"""The PNGs of one question: confusion matrix (classification, ordinal; scikit-learn's `ConfusionMatrixDisplay`),
reliability diagram (`peftkit.tasks.calibration.reliability_png`) and, for two labels, the cumulative gains curve
with the lift at the top shares. Regression has no plot here (its figures are in metrics.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peftkit.evaluation.metrics import TOP_SHARES, gains_curve
from peftkit.tasks.calibration import reliability_png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """Counts of (true label, predicted label), true labels as rows."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(labels))), display_labels=labels, ax=ax, colorbar=False
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gains_png(positive: np.ndarray, score: np.ndarray, lift: dict, path: Path, title: str) -> None:
    """Share of positives captured against share of rows targeted (best first); the diagonal is random targeting."""
    plt = _pyplot()
    x, y = gains_curve(positive, score)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random (lift 1)")
    rate = float(np.mean(positive)) if len(positive) else 0.0
    if rate > 0:  # every positive first: the most any ranking can capture
        ax.plot([0, rate, 1], [0, 1, 1], ls=":", color="green", lw=1, label="perfect ranking")
    ax.plot(x, y, label="ranked by the adapter")
    for share in TOP_SHARES:
        at = lift[f"top_{round(share * 100)}"]
        if at["capture"] is not None:
            ax.plot([share], [at["capture"]], marker="o", color="black")
            ax.annotate(
                f"top {share:.0%}: capture {at['capture']:.0%}, lift {at['lift']:.2f}",
                (share, at["capture"]),
                textcoords="offset points",
                xytext=(8, -12),
                fontsize=8,
            )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="share of rows targeted",
        ylabel="share of positives captured",
        title=title,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    folder: Path, name: str, y_true, y_pred, probs, positive: int | None, labels, lift
) -> list[str]:
    """Every plot of question `name` into `folder`; returns the file names written."""
    written = []
    if labels is None:
        return written
    confusion_png(y_true, y_pred, labels, folder / f"confusion-{name}.png", f"{name}: confusion matrix")
    reliability_png(y_true, {name: probs}, folder / f"reliability-{name}.png", f"{name}: reliability")
    written += [f"confusion-{name}.png", f"reliability-{name}.png"]
    if positive is not None and lift is not None:
        gains_png(
            y_true == positive, probs[:, positive], lift, folder / f"gains-{name}.png",
            f"{name}: cumulative gains ({labels[positive]})",
        )  # fmt: skip
        written.append(f"gains-{name}.png")
    return written
