"""The three task kinds peftkit answers, each one spec (`Task`).

- ``classification``: K unordered labels (value segment, churn yes/no); softmax head, cross-entropy, optionally
  weighted towards rare classes. Primary metric: macro-F1 (accuracy rewards answering the majority class).
- ``ordinal``: K ordered labels (purchase intent weak < medium < strong). The head has K-1 outputs, output k
  predicting P(y > k) (cumulative-link / ordinal-binary decomposition, Frank & Hall 2001; Niu et al. 2016), trained
  with binary cross-entropy. Misranking by one step costs less than by two, which plain softmax ignores. Primary
  metric: mean absolute error in ranks.
- ``regression``: one score (purchasing power in [0, 1]); mean squared error. Primary metric: mean absolute error.

Metrics come from scikit-learn and scipy, not hand-written formulas (ECE aside: `peftkit.tasks.calibration`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from peftkit.tasks.base import IDENTITY, Decision, Decoded, Metric, Task
from peftkit.tasks.calibration import brier, ece


class Classification(Task):
    name = "classification"
    primary = Metric("macro_f1", higher_is_better=True)
    calibrates = True
    decode_text = (
        "logits = head(h); probabilities = softmax(log_softmax(logits) / temperature) (peftkit.json calibration); "
        "label = labels[argmax], or for two labels the positive label when its probability >= threshold.value"
    )

    def num_outputs(self, labels: list[str]) -> int:
        return len(labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights=None) -> torch.Tensor:
        # logits (B, K), labels (B,), class_weights (K,) or None
        return F.cross_entropy(logits.float(), labels.long(), weight=_on(class_weights, logits))

    def class_probs(self, logits: np.ndarray) -> np.ndarray:
        """The head's own class probabilities (N, K), before any calibration."""
        return torch.softmax(torch.from_numpy(logits).float(), dim=-1).numpy()

    def decode(self, logits: np.ndarray, decision: Decision = IDENTITY) -> Decoded:
        raw = self.class_probs(logits)
        probs = decision.calibrate(raw)
        index = raw.argmax(
            -1
        )  # calibration never moves the largest class (a prior shift would: the raw one decides)
        if decision.threshold is not None and probs.shape[1] == 2:
            pos = decision.positive
            index = np.where(probs[:, pos] >= decision.threshold, pos, 1 - pos)
        return Decoded(index=index, score=None, probs=probs, positive=decision.positive)

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

        k = out.probs.shape[1]
        m = {
            "accuracy": float(accuracy_score(y_true, out.index)),
            "macro_f1": float(
                f1_score(y_true, out.index, average="macro", labels=list(range(k)), zero_division=0)
            ),
            "majority_accuracy": float(np.bincount(y_true).max() / len(y_true)),
            # What answering the most frequent held-out label for every row scores: the floor a model must beat.
            "majority_macro_f1": float(
                f1_score(
                    y_true,
                    np.full(len(y_true), np.bincount(y_true).argmax()),
                    average="macro",
                    labels=list(range(k)),
                    zero_division=0,
                )
            ),
            "log_loss": float(log_loss(y_true, np.clip(out.probs, 1e-7, 1), labels=list(range(k)))),
            "ece": ece(y_true, out.probs),
            "brier": brier(y_true, out.probs),
        }
        if k == 2 and len(np.unique(y_true)) == 2:
            pos = out.positive
            m["auc"] = float(roc_auc_score(y_true == pos, out.probs[:, pos]))  # the same either way round
            m["pr_auc"] = float(average_precision_score(y_true == pos, out.probs[:, pos]))
        return m


class Ordinal(Classification):
    name = "ordinal"
    primary = Metric("mae", higher_is_better=False)
    decode_text = (
        "logits = head(h), one per threshold: P(label > labels[k]) = min over j <= k of sigmoid(logits[j]); "
        "class probabilities P(label = k) = P(> k-1) - P(> k), then softmax(log P / temperature) (peftkit.json "
        "calibration); the predicted label is labels[number of thresholds with uncalibrated probability > 0.5]"
    )

    def num_outputs(self, labels: list[str]) -> int:
        return len(labels) - 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights=None) -> torch.Tensor:
        # targets[b, k] = 1 if y_b > k: (B, K-1)
        thresholds = torch.arange(logits.shape[-1], device=logits.device)
        targets = (labels.long().unsqueeze(-1) > thresholds).float()
        per_row = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(
            -1
        )  # (B,)
        weights = _on(class_weights, logits)
        if weights is None:
            return per_row.mean()
        w = weights[labels.long()]  # (B,): each row weighted by its class, normalised as cross_entropy does
        return (per_row * w).sum() / w.sum()

    def _above(self, logits: np.ndarray) -> np.ndarray:
        # P(y > k), made non-increasing in k so the class probabilities are never negative: (N, K-1)
        return np.minimum.accumulate(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), axis=1)

    def class_probs(self, logits: np.ndarray) -> np.ndarray:
        above = self._above(logits)
        ones, zeros = np.ones((len(above), 1)), np.zeros((len(above), 1))
        # P(y = k) = P(y > k-1) - P(y > k): (N, K)
        return (np.hstack([ones, above]) - np.hstack([above, zeros])).astype(np.float32)

    def decode(self, logits: np.ndarray, decision: Decision = IDENTITY) -> Decoded:
        # The predicted rank is the median of the uncalibrated distribution: the thresholds passed with P > 0.5.
        index = (self._above(logits) > 0.5).sum(axis=1)
        return Decoded(index=index, score=None, probs=decision.calibrate(self.class_probs(logits)))

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        from scipy.stats import spearmanr
        from sklearn.metrics import mean_absolute_error

        m = super().metrics(y_true, out)
        m.pop("auc", None)
        m.pop("pr_auc", None)
        m["mae"] = float(mean_absolute_error(y_true, out.index))
        m["spearman"] = _spearman(spearmanr, y_true, out.index)
        return m


class Regression(Task):
    name = "regression"
    primary = Metric("mae", higher_is_better=False)
    labelled = False
    decode_text = "score = head(h)[0]"

    def num_outputs(self, labels: list[str] | None) -> int:
        return 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights=None) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def decode(self, logits: np.ndarray, decision: Decision = IDENTITY) -> Decoded:
        return Decoded(index=None, score=logits[:, 0].astype(np.float64), probs=None)

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        from scipy.stats import spearmanr
        from sklearn.metrics import mean_absolute_error, root_mean_squared_error

        return {
            "mae": float(mean_absolute_error(y_true, out.score)),
            "rmse": float(root_mean_squared_error(y_true, out.score)),
            "spearman": _spearman(spearmanr, y_true, out.score),
            "mean_baseline_mae": float(mean_absolute_error(y_true, np.full(len(y_true), np.mean(y_true)))),
        }


def _on(weights, like: torch.Tensor):
    """Class weights as a float tensor on `like`'s device, or None."""
    if weights is None:
        return None
    return torch.as_tensor(weights, dtype=torch.float32, device=like.device)


def _spearman(spearmanr, a, b) -> float:
    if np.std(a) == 0 or np.std(b) == 0:  # undefined for a constant column; report 0 rather than NaN
        return 0.0
    return float(spearmanr(a, b).statistic)
