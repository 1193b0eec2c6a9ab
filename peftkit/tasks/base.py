"""What every task kind shares: the decoded outputs, the decision saved with an adapter, and the spec's shape.

A task spec (`Task`) answers, for one kind of question, everything that used to be asked in several places: how many
outputs its head has, its loss, how logits become labels and probabilities, its metrics, the **primary metric** that
picks the best epoch, ranks methods in ``peftkit compare``, heads ``inspect`` and gates a refresh, and how a prediction
becomes file columns and JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Metric:
    """A metric's name in every metrics dict and whether higher is better."""

    name: str
    higher_is_better: bool

    def better(self, value: float) -> float:
        """`value` turned so that larger is always better (for max())."""
        return value if self.higher_is_better else -value


@dataclass(frozen=True)
class Decoded:
    """Per-row results: ``index`` (label index) or ``score`` (regression), and class probabilities (N, K)."""

    index: np.ndarray | None
    score: np.ndarray | None
    probs: np.ndarray | None
    positive: int = 1  # two labels: the positive label's index (the decision's), which PR-AUC is about


@dataclass(frozen=True)
class Decision:
    """How an adapter turns its head's outputs into probabilities and a label, fitted on held-out rows after training
    and saved in its manifest (``calibration`` and ``threshold``). The identity (``Decision()``) is what adapters
    written before these existed use.

    - ``temperature``: probabilities are ``softmax(log p / T)`` of the head's own class probabilities ``p``
      (temperature scaling, Guo et al. 2017; `peftkit.tasks.calibration`). It never changes which class is largest.
    - ``prior_shift``: log class weights the adapter trained with, taken off before the temperature, so that weighting
      a rare class up in training does not inflate its probability (logit adjustment, Menon et al. 2021).
    - ``threshold``: binary tasks only. The label is the positive one when its (calibrated) probability is at least
      this; probabilities are never changed by it.
    """

    temperature: float = 1.0
    prior_shift: tuple[float, ...] | None = None
    threshold: float | None = None
    positive: int = 1  # the index of the positive label the threshold is for

    @classmethod
    def from_json(cls, calibration: dict[str, Any] | None, threshold: dict[str, Any] | None) -> Decision:
        """The decision a manifest's ``calibration`` and ``threshold`` sections describe (either may be absent)."""
        calibration, threshold = calibration or {}, threshold or {}
        shift = calibration.get("prior_shift")
        return cls(
            temperature=float(calibration.get("temperature", 1.0)),
            prior_shift=tuple(shift) if shift else None,
            threshold=threshold.get("value"),
            positive=int(threshold.get("positive_index", 1)),
        )

    @property
    def identity(self) -> bool:
        return self.temperature == 1.0 and self.prior_shift is None and self.threshold is None

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) -> calibrated ones, rows still summing to 1."""
        if self.temperature == 1.0 and self.prior_shift is None:
            return probs
        logp = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0))
        if self.prior_shift is not None:
            logp = logp - np.asarray(self.prior_shift)
        z = logp / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


IDENTITY = Decision()

# Every metric a task reports and whether higher is better (selection by another metric: train.select_metric).
DIRECTIONS = {
    "accuracy": True,
    "macro_f1": True,
    "auc": True,
    "pr_auc": True,
    "spearman": True,
    "log_loss": False,
    "ece": False,
    "brier": False,
    "mae": False,
    "rmse": False,
}


def metric(name: str) -> Metric:
    """The `Metric` of a name in `DIRECTIONS`."""
    return Metric(name, DIRECTIONS[name])


class Task:
    """One kind of question: subclasses fill in the outputs, loss, decoding and metrics."""

    name: ClassVar[str]
    primary: ClassVar[Metric]
    # Plain-words decoding for the head exported beside a LoRA (`peftkit.export.head`).
    decode_text: ClassVar[str]
    calibrates: ClassVar[bool] = False  # has class probabilities a temperature can calibrate
    labelled: ClassVar[bool] = True  # labels are names (classification, ordinal), not numbers

    def num_outputs(self, labels: list[str] | None) -> int:
        raise NotImplementedError

    def loss(self, logits, labels, class_weights=None):
        raise NotImplementedError

    def decode(self, logits: np.ndarray, decision: Decision = IDENTITY) -> Decoded:
        raise NotImplementedError

    def metrics(self, y_true: np.ndarray, out: Decoded) -> dict[str, float]:
        raise NotImplementedError

    def metric_names(self, k: int) -> list[str]:
        """The metrics this task reports for `k` labels (what ``train.select_metric`` may name)."""
        k = max(k, 2)
        y = np.arange(2 * k) % k
        logits = np.zeros((2 * k, self.num_outputs([str(i) for i in range(k)])), dtype=np.float32)
        return [n for n in self.metrics(y, self.decode(logits)) if n in DIRECTIONS]

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float | None]:
        """(primary metric name, its value or None) from a metrics dict, for tables and one-line summaries."""
        value = metrics.get(self.primary.name)
        return self.primary.name, (float(value) if isinstance(value, int | float) else None)
