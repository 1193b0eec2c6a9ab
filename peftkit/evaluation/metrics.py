"""The figures of one question on its scored rows: the task spec's own metrics (the numbers training reports, from
`Task.metrics`) overall and per group of rows, plus what the spec has no need for during training: the per-class
table (scikit-learn's precision, recall, F1 and support) and, for two labels, lift and capture at the top shares.

Lift and capture (two labels): rows are ranked by the positive label's probability (ties keep file order) and the top
share S is targeted. With ``k = max(1, round(S * N))`` rows targeted:

    positive_rate (top)  positives among the k / k
    lift                 positive_rate (top) / positive_rate (all rows)       1.0: no better than picking at random
    capture              positives among the k / all positives               also called recall at S, or gain
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peftkit.tasks import Decoded, Task

TOP_SHARES = (0.1, 0.2)  # lift and capture are reported at these shares of rows


def decoded(task: Task, y_pred: np.ndarray, probs: np.ndarray | None) -> Decoded:
    """Predict's answers as the spec's `Decoded`: label indices (or scores for regression) and class probabilities."""
    if not task.labelled:
        return Decoded(index=None, score=y_pred.astype(np.float64), probs=None)
    return Decoded(index=y_pred.astype(int), score=None, probs=probs)


def group_metrics(task: Task, y_true: np.ndarray, out: Decoded) -> dict[str, Any]:
    """The spec's metrics on these rows, the primary metric first, then ``support`` (rows)."""
    import warnings

    y = y_true if not task.labelled else y_true.astype(int)
    with warnings.catch_warnings():  # a small group may hold one class; the spec's metrics stay defined
        warnings.simplefilter("ignore")
        metrics = task.metrics(y, out)
    first = task.primary.name
    return {first: metrics.pop(first), "support": int(len(y)), **metrics}


def subset(out: Decoded, rows: np.ndarray) -> Decoded:
    """`out` restricted to `rows` (a boolean mask or indices)."""

    def take(a):
        return None if a is None else a[rows]

    return Decoded(take(out.index), take(out.score), take(out.probs))


def per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """label -> precision, recall, f1, support (scikit-learn; 0 where a label is never predicted)."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), zero_division=0
    )
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def lift(positive: np.ndarray, score: np.ndarray, shares: tuple[float, ...] = TOP_SHARES) -> dict[str, Any]:
    """Lift and capture of ranking rows by `score` (the positive label's probability), `positive` (N,) bool.

    Returns ``{"positive_rate": ..., "positives": ..., "top_10": {"share", "rows", "positives", "positive_rate",
    "lift", "capture"}, "top_20": {...}}``; lift and capture are None when there is no positive row.
    """
    positive = np.asarray(positive, dtype=bool)
    n, total = len(positive), int(positive.sum())
    order = np.argsort(
        -np.asarray(score, dtype=np.float64), kind="stable"
    )  # highest first, ties in file order
    base = total / n if n else 0.0
    out: dict[str, Any] = {"positive_rate": base, "positives": total, "rows": n}
    for share in shares:
        k = max(1, int(round(share * n)))
        found = int(positive[order[:k]].sum())
        rate = found / k
        out[f"top_{round(share * 100)}"] = {
            "share": share,
            "rows": k,
            "positives": found,
            "positive_rate": rate,
            "lift": rate / base if total else None,
            "capture": found / total if total else None,
        }
    return out


def gains_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of rows targeted, share of positives captured), from 0 to 1, rows ranked by `score`."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    found = np.concatenate([[0], np.cumsum(positive[order])])
    return np.arange(len(positive) + 1) / max(len(positive), 1), found / max(int(positive.sum()), 1)
