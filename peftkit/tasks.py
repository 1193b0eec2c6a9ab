"""Task heads: how logits become a loss, a prediction and metrics, for the three kinds of question peftkit answers.

- ``classification``: K unordered labels (value segment, churn yes/no); softmax head, cross-entropy.
- ``ordinal``: K ordered labels (purchase intent weak < medium < strong). The head has K-1 outputs, output k
  predicting P(y > k) (cumulative-link / ordinal-binary decomposition, Frank & Hall 2001; Niu et al. 2016), trained
  with binary cross-entropy. Misranking by one step costs less than by two, which plain softmax ignores.
- ``regression``: one score (purchasing power in [0, 1]); mean squared error.

Metrics come from scikit-learn and scipy, not hand-written formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Decoded:
    """Per-row results: ``index`` (label index) or ``score`` (regression), and class probabilities (N, K)."""

    index: np.ndarray | None
    score: np.ndarray | None
    probs: np.ndarray | None


class Classification:
    name = "classification"

    def num_outputs(self, labels: list[str]) -> int:
        return len(labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.long())  # logits (B, K), labels (B,)

    def decode(self, logits: np.ndarray) -> Decoded:
        probs = torch.softmax(torch.from_numpy(logits).float(), dim=-1).numpy()
        return Decoded(index=probs.argmax(-1), score=None, probs=probs)

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

        m = {
            "accuracy": float(accuracy_score(y_true, out.index)),
            "macro_f1": float(f1_score(y_true, out.index, average="macro")),
            "majority_accuracy": float(np.bincount(y_true).max() / len(y_true)),
        }
        if out.probs.shape[1] == 2 and len(np.unique(y_true)) == 2:
            m["auc"] = float(roc_auc_score(y_true, out.probs[:, 1]))
        return m


class Ordinal(Classification):
    name = "ordinal"

    def num_outputs(self, labels: list[str]) -> int:
        return len(labels) - 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # targets[b, k] = 1 if y_b > k: (B, K-1)
        thresholds = torch.arange(logits.shape[-1], device=logits.device)
        targets = (labels.long().unsqueeze(-1) > thresholds).float()
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def decode(self, logits: np.ndarray) -> Decoded:
        # P(y > k), made non-increasing in k so the class probabilities below are never negative: (N, K-1)
        above = np.minimum.accumulate(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), axis=1)
        ones, zeros = np.ones((len(above), 1)), np.zeros((len(above), 1))
        probs = np.hstack([ones, above]) - np.hstack(
            [above, zeros]
        )  # P(y = k) = P(y > k-1) - P(y > k): (N, K)
        # The predicted rank is the median of that distribution: the number of thresholds passed with P > 0.5.
        return Decoded(index=(above > 0.5).sum(axis=1), score=None, probs=probs.astype(np.float32))

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        from scipy.stats import spearmanr
        from sklearn.metrics import mean_absolute_error

        m = super().metrics(y_true, out)
        m.pop("auc", None)
        m["mae"] = float(mean_absolute_error(y_true, out.index))
        m["spearman"] = _spearman(spearmanr, y_true, out.index)
        return m


class Regression:
    name = "regression"

    def num_outputs(self, labels: list[str] | None) -> int:
        return 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def decode(self, logits: np.ndarray) -> Decoded:
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


def _spearman(spearmanr, a, b) -> float:
    if np.std(a) == 0 or np.std(b) == 0:  # undefined for a constant column; report 0 rather than NaN
        return 0.0
    return float(spearmanr(a, b).statistic)


TASKS = {t.name: t for t in (Classification(), Ordinal(), Regression())}
