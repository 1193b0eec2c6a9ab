"""Task heads: losses, decoding and metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftkit.tasks import TASKS


def test_classification_metrics_match_hand_computed():
    task = TASKS["classification"]
    # Rows 0..3 are class 0,0,1,1; predicted 0,1,1,1 -> accuracy 3/4.
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 1.0]], dtype=np.float32)
    out = task.decode(logits)
    m = task.metrics(np.array([0, 0, 1, 1]), out)
    assert m["accuracy"] == pytest.approx(0.75)
    # F1 class 0: P=1, R=.5 -> 2/3; class 1: P=2/3, R=1 -> 0.8; macro = (2/3 + 0.8) / 2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # P(class 1) ranks rows: 0.12, 0.73, 0.95, 0.88 -> every positive above every negative: AUC 1.0
    assert m["auc"] == pytest.approx(1.0)
    assert m["majority_accuracy"] == pytest.approx(0.5)
    assert out.probs.sum(axis=1) == pytest.approx(np.ones(4), abs=1e-6)


def test_ordinal_decodes_the_median_rank_and_valid_probabilities():
    task = TASKS["ordinal"]
    # Two thresholds (3 ordered labels): logits for P(y>0), P(y>1).
    logits = np.array([[-3.0, -4.0], [3.0, -3.0], [4.0, 2.0], [-1.0, 1.0]], dtype=np.float32)
    out = task.decode(logits)
    assert out.index.tolist() == [0, 1, 2, 0]  # last row: P(y>1) is capped by P(y>0) < 0.5
    assert (out.probs >= 0).all()
    assert out.probs.sum(axis=1) == pytest.approx(np.ones(4), abs=1e-6)
    sig = 1 / (1 + math.exp(-3.0))
    assert out.probs[1].tolist() == pytest.approx([1 - sig, sig - (1 - sig), 1 - sig], abs=1e-6)


def test_ordinal_metrics_mae_counts_rank_distance():
    task = TASKS["ordinal"]
    out = task.decode(np.array([[5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]], dtype=np.float32))  # ranks 2, 1, 0
    m = task.metrics(np.array([0, 1, 2]), out)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["mae"] == pytest.approx((2 + 0 + 2) / 3)
    assert m["spearman"] == pytest.approx(-1.0)


def test_ordinal_loss_targets_are_cumulative():
    task = TASKS["ordinal"]
    labels = torch.tensor([0, 2])
    perfect = torch.tensor([[-20.0, -20.0], [20.0, 20.0]])
    wrong = torch.tensor([[20.0, 20.0], [-20.0, -20.0]])
    assert task.loss(perfect, labels) < 1e-6
    assert task.loss(wrong, labels) > 10


def test_regression_metrics():
    task = TASKS["regression"]
    out = task.decode(np.array([[0.1], [0.5], [0.7]], dtype=np.float32))
    m = task.metrics(np.array([0.0, 0.5, 1.0]), out)
    assert m["mae"] == pytest.approx((0.1 + 0.0 + 0.3) / 3, abs=1e-6)
    assert m["rmse"] == pytest.approx(math.sqrt((0.01 + 0 + 0.09) / 3), abs=1e-6)
    assert m["spearman"] == pytest.approx(1.0)


def test_every_task_the_config_accepts_has_a_head_and_no_other():
    from typing import get_args

    from peftkit.config import Task

    assert set(get_args(Task)) == set(TASKS)
