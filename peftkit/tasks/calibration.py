"""Calibrated probabilities: temperature scaling fitted on held-out rows, and how far probabilities are from the rates
they claim (ECE, Brier).

A marketing budget computed as the sum of p(convert) is only as good as these probabilities. Temperature scaling (Guo
et al. 2017) divides the log-probabilities by one number T fitted to minimise the held-out log-loss: confident-but-wrong
adapters get T > 1, timid ones T < 1, and the ranking of rows and the largest class never change, so accuracy and AUC
are exactly as before. scikit-learn fits T (``CalibratedClassifierCV(method="temperature", cv=2)  # cv: folds of a frozen estimator; its scores do not depend on them`` over the adapter's
frozen scores); peftkit reads the fitted value and applies it to every probability it gives out (`Decision`).

ECE (expected calibration error): rows binned by their top probability into 15 equal-width bins; the mean gap between
confidence and accuracy, weighted by the bin's rows. scikit-learn has no ECE (it has `calibration_curve`, for one
class), so it is computed here in a few lines. Brier: scikit-learn's multiclass `brier_score_loss`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15
MIN_ROWS = (
    30  # fewer held-out rows than this: no temperature is fitted (it would fit noise); the manifest says so
)


def ece(y_true: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error of class probabilities `probs` (N, K) against labels `y_true` (N,)."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == y_true).astype(np.float64)
    which = _bin(confidence, bins)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.sum() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / len(y_true))


def _bin(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each probability: bin b holds (b/bins, (b+1)/bins], 0 going to the first bin."""
    return np.clip(np.ceil(values * bins).astype(int) - 1, 0, bins - 1)


def brier(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Squared distance between `probs` (N, K) and the one-hot labels, summed over classes, halved and averaged over
    rows (for two classes: the usual binary Brier score of the positive class; 0 is perfect, at most 1)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(y_true, probs, labels=list(range(probs.shape[1])), scale_by_half=True))


def _frozen_scores(k: int):
    """The adapter's log-probabilities seen by scikit-learn as a fitted classifier's decision function, so its
    calibration code fits the temperature over them (the rows given as `X` are the scores themselves)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class FrozenScores(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):  # already trained: the adapter is
            self.classes_ = np.arange(k)
            return self

        def decision_function(self, X):
            X = np.asarray(X)
            # Binary: scikit-learn turns a 1-D score d into the two logits (-d, d), so half the log-odds gives
            # softmax((-d/2, d/2)) = (p0, p1).
            return (X[:, 1] - X[:, 0]) / 2 if X.shape[1] == 2 else X

        def predict(self, X):
            return np.asarray(X).argmax(axis=1)

    return FrozenScores().fit(None, None)


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, prior_shift: np.ndarray | None = None) -> float:
    """The temperature T that minimises the log-loss of ``softmax((log probs - prior_shift) / T)`` on these rows."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    logp = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0))
    if prior_shift is not None:
        logp = logp - prior_shift
    k = probs.shape[1]
    calibrated = CalibratedClassifierCV(
        FrozenEstimator(_frozen_scores(k)), method="temperature", cv=2
    )  # cv: folds of a frozen estimator; its scores do not depend on them
    calibrated.fit(logp, np.asarray(y_true))
    beta = float(calibrated.calibrated_classifiers_[0].calibrators[0].beta_)  # the fitted inverse temperature
    return 1.0 / beta


def reliability_png(
    y_true: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str, positive: int | None = None
) -> None:
    """A reliability diagram, per curve (name -> probabilities (N, K)), in `ECE_BINS` bins; the diagonal is perfect
    calibration and each curve's ECE is in the legend. Two labels (`positive` given): the positive label's
    probability against the observed share of positives, the usual binary diagram; otherwise accuracy against
    top-label confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, probs in curves.items():
        if positive is not None:
            x, hit = probs[:, positive], (y_true == positive)
        else:
            x, hit = probs.max(axis=1), (probs.argmax(axis=1) == y_true)
        which = _bin(x, ECE_BINS)
        xs, ys, sizes = [], [], []
        for b in range(ECE_BINS):
            rows = which == b
            if rows.sum() >= 3:  # a bin of one or two rows is noise, not a rate
                xs.append(x[rows].mean())
                ys.append(hit[rows].mean())
                sizes.append(rows.sum())
        line = ax.plot(xs, ys, label=f"{name} (ECE {ece(y_true, probs):.3f})")[0]
        ax.scatter(xs, ys, s=[10 + 90 * n / max(sizes) for n in sizes], color=line.get_color())
    what = "positive-label probability" if positive is not None else "confidence (top-label probability)"
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel=f"{what}; dot size: rows",
        ylabel="observed share of positives" if positive is not None else "accuracy",
        title=title,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
