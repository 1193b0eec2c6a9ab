"""After training: class weights for rare labels, and the `Decision` fitted on the held-out rows (temperature, then
the threshold), with the figures that justify both.

Class weights (``train.class_weights``): ``auto`` weights classes "balanced" (n_rows / (K * n_class), scikit-learn's
`compute_class_weight`) when the rarest class is under `RARE_SHARE` of the training rows of a classification task,
and not otherwise; ``balanced`` always; ``none`` never. Ordinal tasks use them only when asked (their cumulative
thresholds already start at the label distribution: `peftkit.heads`); regression has no classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peftkit.errors import PeftkitError
from peftkit.tasks import calibration, threshold
from peftkit.tasks.base import IDENTITY, Decision, Task

RARE_SHARE = 0.2  # below this share of training rows a class counts as rare (auto class weights)


def class_weights(mode: str, task: Task, train_labels: list[int], k: int) -> np.ndarray | None:
    """The loss's per-class weights (K,), or None for an unweighted loss."""
    if not task.labelled or mode == "none":
        if mode == "balanced":
            raise PeftkitError(f"train.class_weights=balanced: a {task.name} task has no classes; use none")
        return None
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=k)
    if mode == "auto" and (task.name != "classification" or counts.min() >= RARE_SHARE * counts.sum()):
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.flatnonzero(counts)
    weights = np.ones(k)
    weights[present] = compute_class_weight(
        "balanced", classes=present, y=np.asarray(train_labels, dtype=int)
    )
    return weights


def positive_index(labels: list[str], train_labels: list[int], positive: str | None) -> int:
    """The label a binary threshold is for: ``decision.positive``, else the rarer training label (the one a shop
    targets: converters, churners), ties going to the second label."""
    if positive is not None:
        if positive not in labels:
            raise PeftkitError(
                f"decision.positive={positive!r} is not one of the labels ({', '.join(labels)}); name one of them"
            )
        return labels.index(positive)
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=2)
    return 0 if counts[0] < counts[1] else 1


def fit_decision(
    task: Task,
    logits: np.ndarray,
    y_true: np.ndarray,
    *,
    labels: list[str] | None,
    calibrate: bool,
    objective: threshold.Objective,
    positive: int,
    weights: np.ndarray | None,
) -> tuple[Decision, dict[str, Any] | None, dict[str, Any] | None]:
    """(decision, manifest ``calibration`` section, manifest ``threshold`` section) from the held-out `logits`."""
    if not task.calibrates or not len(y_true):
        return IDENTITY, None, None
    raw = task.class_probs(logits)
    shift = np.log(weights) if weights is not None else None
    cal = {"method": "temperature", "temperature": 1.0, "rows": int(len(y_true))}
    if shift is not None:
        cal["prior_shift"] = [float(v) for v in shift]
    counts = np.bincount(y_true.astype(int), minlength=raw.shape[1])
    why_not = None
    if not calibrate:
        why_not = "decision.calibrate=false"
    elif len(y_true) < calibration.MIN_ROWS:
        why_not = f"{len(y_true)} held-out rows (at least {calibration.MIN_ROWS} needed)"
    elif (counts < 2).any():
        why_not = f"label {labels[int(np.argmin(counts))]!r} has fewer than 2 held-out rows"
    prior = tuple(shift) if shift is not None else None
    if why_not is None:
        fitted = calibration.fit_temperature(y_true, raw, shift)
        # The log-loss optimum can still raise the binned calibration error on few rows (the default job's 128
        # held-out rows: ECE 0.120 -> 0.126 at T 0.37): a temperature is kept only where it does not.
        unscaled = calibration.ece(y_true, Decision(prior_shift=prior).calibrate(raw))
        scaled = calibration.ece(y_true, Decision(temperature=fitted, prior_shift=prior).calibrate(raw))
        if scaled <= unscaled:
            cal["temperature"] = fitted
        else:
            cal["skipped"] = (
                f"temperature {fitted:.3f} would raise the held-out ECE ({unscaled:.3f} -> {scaled:.3f})"
            )
    else:
        cal["skipped"] = why_not
    decision = Decision(temperature=cal["temperature"], prior_shift=prior)
    probs = decision.calibrate(raw)
    cal |= {
        "ece_before": calibration.ece(y_true, raw),
        "ece_after": calibration.ece(y_true, probs),
        "brier_before": calibration.brier(y_true, raw),
        "brier_after": calibration.brier(y_true, probs),
    }
    if raw.shape[1] != 2 or task.name != "classification":
        return decision, cal, None
    p = probs[:, positive]
    y_pos = (y_true == positive).astype(int)
    value, reason = threshold.choose(y_pos, p, objective)
    section: dict[str, Any] = {
        "objective": str(objective),
        "positive": labels[positive],
        "positive_index": positive,
    }
    if value is None:
        section["skipped"] = reason
    else:
        section |= {"value": value, "held_out": threshold.rates(y_pos, p, value)}
    return Decision(decision.temperature, decision.prior_shift, value, positive), cal, section
