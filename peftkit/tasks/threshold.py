"""The decision threshold of a binary task: which probability of the positive class makes a row positive.

Argmax (0.5) is right only when both errors cost the same and the classes are balanced. With 3% converters an
adapter can be useful (it ranks converters high) and still answer "no" for every row at 0.5. The threshold is chosen
on the held-out rows after training and calibration, for a stated objective (``decision.threshold``):

- ``macro_f1`` (default): the threshold with the best macro-F1, the task's primary metric (both labels' F1 count
  alike, so neither "nobody converts" nor "everybody converts" scores well);
- ``f1``: the best F1 of the positive class alone. On a weak ranking this drifts towards calling most rows positive
  (on CDNOW conversion, AUC ~0.6: 95% of rows), the mirror image of argmax's "nobody";
- ``precision:P``: the lowest threshold whose precision is at least P (the most positives you can target at that
  precision);
- ``recall:R``: the highest threshold whose recall is at least R (the fewest false alarms that still catch R);
- ``top:S``: the share S of rows with the highest probability are positive (a budget: "call the top 10%");
- ``none``: argmax, as before thresholds existed.

The held-out rows also chose the best epoch and the temperature, so the precision/recall printed for the threshold
are slightly optimistic; score a separate labelled file with ``peftkit evaluate`` for unbiased figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftkit.errors import PeftkitError

OBJECTIVES = ("macro_f1", "f1", "precision", "recall", "top", "none")


@dataclass(frozen=True)
class Objective:
    kind: str  # one of OBJECTIVES
    target: float | None = None  # P, R or S

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``macro_f1``, ``f1``, ``none``, ``precision:0.8``, ``recall:0.6`` or ``top:0.1``; a one-line error
        otherwise."""
        kind, _, target = str(text).strip().partition(":")
        if kind not in OBJECTIVES:
            raise PeftkitError(
                f"decision.threshold={text!r}: use macro_f1, f1, none, precision:P, recall:R or top:S (e.g. "
                "precision:0.8)"
            )
        if kind in ("macro_f1", "f1", "none"):
            if target:
                raise PeftkitError(f"decision.threshold={text!r}: {kind} takes no value; write {kind}")
            return cls(kind)
        try:
            value = float(target)
        except ValueError:
            value = -1.0
        if not 0 < value < 1:
            raise PeftkitError(
                f"decision.threshold={text!r}: {kind} needs a share between 0 and 1, e.g. {kind}:0.8"
            )
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def choose(
    y_true: np.ndarray, p_positive: np.ndarray, objective: Objective
) -> tuple[float | None, str | None]:
    """(threshold, why not) for positives ``y_true == 1`` scored `p_positive`; the threshold is None with the reason
    when the objective cannot be met on these rows."""
    from sklearn.metrics import precision_recall_curve

    if objective.kind == "none":
        return None, "decision.threshold=none"
    if objective.kind == "top":
        # The probability of the row at the top-S boundary: rows at or above it are the top share.
        k = max(1, int(round(objective.target * len(p_positive))))
        return float(np.sort(p_positive)[::-1][k - 1]), None
    if y_true.sum() == 0 or y_true.sum() == len(y_true):
        return None, "the held-out rows hold one class only"
    precision, recall, thresholds = precision_recall_curve(y_true, p_positive)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    if objective.kind == "macro_f1":
        return _best_macro_f1(y_true, p_positive), None
    if objective.kind == "f1":
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
        )
        return float(thresholds[int(np.argmax(f1))]), None
    if objective.kind == "precision":
        ok = np.flatnonzero(precision >= objective.target)
        if not len(ok):
            return None, f"no threshold reaches precision {objective.target:g} on the held-out rows"
        return float(thresholds[ok[0]]), None  # thresholds ascend: the first is the lowest, the most recall
    ok = np.flatnonzero(recall >= objective.target)  # recall descends as the threshold rises
    return float(thresholds[ok[-1]]), None


def _best_macro_f1(y_true: np.ndarray, p: np.ndarray) -> float:
    """The cut with the best mean of both labels' F1. Every distinct probability is a candidate; with the rows sorted
    by probability the confusion counts of all cuts are cumulative sums, so all are scored at once (scikit-learn's
    curves give one label's precision/recall only)."""
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y_true[order].astype(int)
    last = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p) - 1]  # the last row of each distinct probability
    tp = np.cumsum(y_sorted)[last]  # positives at or above each cut
    fp = (last + 1) - tp
    positives, negatives = y_sorted.sum(), len(y_sorted) - y_sorted.sum()
    fn, tn = positives - tp, negatives - fp
    f1_pos = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1_neg = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    return float(p_sorted[last][int(np.argmax((f1_pos + f1_neg) / 2))])


def rates(y_true: np.ndarray, p_positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 of the positive class and the share predicted positive at `threshold`."""
    from sklearn.metrics import f1_score, precision_score, recall_score

    pred = (p_positive >= threshold).astype(int)
    return {
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "positive_share": float(pred.mean()),
    }
