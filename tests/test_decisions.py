"""Scores a shop can act on: calibration (ECE, Brier, temperature), the decision threshold, class weights, the task
table's primary metric, and adapters that carry their fitted decision through predict and banks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.tasks import TASKS, Decision
from peftkit.tasks import calibration as cal
from peftkit.tasks.decide import RARE_SHARE, class_weights, fit_decision
from peftkit.tasks.threshold import Objective, choose, rates
from peftkit.training.loop import train
from tests.conftest import FILLER, WORDS


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# -- calibration figures, checked by hand ----------------------------------------------------------------------------


def test_ece_and_brier_match_hand_counts():
    # Three rows, all at confidence 0.9 for class 0, two of them right: one bin, |2/3 - 0.9| = 0.2333.
    y = np.array([0, 0, 1])
    p = np.array([[0.9, 0.1]] * 3)
    assert cal.ece(y, p) == pytest.approx(abs(2 / 3 - 0.9))
    # Binary Brier: mean of (p1 - y)^2 = (0.01 + 0.01 + 0.81) / 3.
    assert cal.brier(y, p) == pytest.approx((0.01 + 0.01 + 0.81) / 3)
    # Three classes: half the summed squared distance to the one-hot row, averaged.
    y3, p3 = np.array([2]), np.array([[0.2, 0.3, 0.5]])
    assert cal.brier(y3, p3) == pytest.approx((0.04 + 0.09 + 0.25) / 2)


@pytest.mark.parametrize("k", [2, 4])
def test_temperature_recovers_an_overconfident_model_and_keeps_the_ranking(k):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, k)) * 2
    y = np.array(
        [rng.choice(k, p=p) for p in softmax(z / 2.5)]
    )  # the truth is 2.5x less sure than the scores
    raw = softmax(z)
    t = cal.fit_temperature(y, raw)
    assert t == pytest.approx(2.5, rel=0.1)
    calibrated = Decision(temperature=t).calibrate(raw)
    assert cal.ece(y, calibrated) < cal.ece(y, raw) / 2
    assert cal.brier(y, calibrated) < cal.brier(y, raw)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1, atol=1e-5)


def test_the_applied_temperature_reproduces_scikit_learns_calibrated_probabilities():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 3)) * 3
    y = np.array([rng.choice(3, p=p) for p in softmax(z / 2)])
    raw = softmax(z)
    ours = Decision(temperature=cal.fit_temperature(y, raw)).calibrate(raw)
    sk = CalibratedClassifierCV(FrozenEstimator(cal._frozen_scores(3)), method="temperature", cv=2)
    theirs = sk.fit(np.log(raw), y).predict_proba(np.log(raw))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


# -- thresholds ------------------------------------------------------------------------------------------------------

Y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def test_threshold_objectives_pick_the_hand_computed_cut():
    # F1 by cut: at 0.9 2/4, 0.8 0.8, 0.7 0.667, 0.6 6/7 = 0.857 (best), 0.5 0.75 ...
    assert choose(Y, P, Objective.parse("f1"))[0] == 0.6
    # Macro-F1 by cut (positive F1, negative F1): 0.8 (4/5, 14/15) 0.867; 0.7 (4/6, 12/14) 0.762;
    # 0.6 (6/7, 12/13) 0.890 (best); 0.5 (6/8, 10/12) 0.792.
    assert choose(Y, P, Objective.parse("macro_f1"))[0] == 0.6
    # Where they part: three positives in ten, ranked weakly. F1 alone is best (6/11) calling 80% of rows positive;
    # macro-F1 (0.6875 at 0.9: positive F1 1/2, negative F1 7/8) keeps a cut that also serves the negatives.
    y2 = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 0])
    assert choose(y2, P, Objective.parse("f1"))[0] == 0.2
    assert choose(y2, P, Objective.parse("macro_f1"))[0] == 0.9
    assert rates(Y, P, 0.6) == {
        "precision": 0.75,
        "recall": 1.0,
        "f1": pytest.approx(6 / 7),
        "positive_share": 0.4,
    }
    # Precision >= 0.9: only the cuts 0.9 and 0.8 reach it; 0.8 keeps more recall.
    assert choose(Y, P, Objective.parse("precision:0.9"))[0] == 0.8
    # Recall >= 0.6: 2 of 3 positives are found from 0.8 down; the highest such cut.
    assert choose(Y, P, Objective.parse("recall:0.6"))[0] == 0.8
    # The top 30% of rows: the third highest probability.
    assert choose(Y, P, Objective.parse("top:0.3"))[0] == 0.7
    assert choose(Y, P, Objective.parse("none")) == (None, "decision.threshold=none")
    value, why = choose(Y, P * 0 + 0.01, Objective.parse("precision:0.99"))
    assert value is None and "precision 0.99" in why


@pytest.mark.parametrize("bad", ["f2", "precision", "precision:1.5", "top:x", "f1:0.3"])
def test_bad_objectives_are_one_line_errors(bad):
    with pytest.raises(PeftkitError, match="decision.threshold"):
        Objective.parse(bad)


def test_a_threshold_changes_labels_never_probabilities():
    task = TASKS["classification"]
    logits = np.log(np.column_stack([1 - P, P]))
    plain, cut = task.decode(logits), task.decode(logits, Decision(threshold=0.35))
    np.testing.assert_allclose(plain.probs, cut.probs)
    np.testing.assert_array_equal(plain.index, (P > 0.5).astype(int))
    np.testing.assert_array_equal(cut.index, (P >= 0.35).astype(int))
    # Positive label 0: the threshold is on the first label's probability.
    first = task.decode(logits, Decision(threshold=0.35, positive=0)).index
    np.testing.assert_array_equal(first, np.where(1 - P >= 0.35, 0, 1))


# -- class weights and the task table --------------------------------------------------------------------------------


def test_class_weights_auto_only_below_the_rare_share():
    task = TASKS["classification"]
    rare = [0] * 90 + [1] * 10
    w = class_weights("auto", task, rare, 2)
    np.testing.assert_allclose(w, [100 / (2 * 90), 100 / (2 * 10)])
    common = [0] * 70 + [1] * 30
    assert RARE_SHARE < 0.3 and class_weights("auto", task, common, 2) is None
    np.testing.assert_allclose(class_weights("balanced", task, common, 2), [100 / 140, 100 / 60])
    assert class_weights("none", task, rare, 2) is None
    assert class_weights("auto", TASKS["ordinal"], rare, 2) is None  # ordinal: only when asked
    with pytest.raises(PeftkitError, match="regression task has no classes"):
        class_weights("balanced", TASKS["regression"], [], 0)


def test_weighted_loss_equals_the_hand_weighted_mean():
    import torch

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = np.array([1.0, 3.0])
    nll = -torch.log_softmax(logits, -1)[torch.arange(3), labels]
    expected = (nll * torch.tensor([1.0, 3.0, 3.0])).sum() / 7
    assert float(TASKS["classification"].loss(logits, labels, w)) == pytest.approx(float(expected))


def test_one_primary_metric_per_task_read_by_selection_compare_and_export():
    from peftkit.compare.report import PRIMARY
    from peftkit.export.head import DECODE
    from peftkit.selection import score

    assert {n: t.primary.name for n, t in TASKS.items()} == {
        "classification": "macro_f1",
        "ordinal": "mae",
        "regression": "mae",
    }
    assert {n: (t.primary.name, t.primary.higher_is_better) for n, t in TASKS.items()} == PRIMARY
    assert {n: t.decode_text for n, t in TASKS.items()} == DECODE
    assert score("ordinal", {"mae": 0.4, "accuracy": 0.9}) == ("mae", -0.4)
    assert score("classification", {"macro_f1": 0.6, "auc": 0.8}, by="auc") == ("auc", 0.8)


def test_fit_decision_leaves_a_one_class_held_out_set_uncut():
    task = TASKS["classification"]
    logits = np.zeros((40, 2), dtype=np.float32)
    decision, calibration, threshold = fit_decision(
        task,
        logits,
        np.zeros(40, int),
        labels=["a", "b"],
        calibrate=True,
        objective=Objective.parse("f1"),
        positive=1,
        weights=None,
    )
    assert decision.threshold is None and "one class" in threshold["skipped"]
    assert "fewer than 2" in calibration["skipped"] and decision.temperature == 1.0


# -- end to end: a rare positive class on a tiny model ---------------------------------------------------------------


def rare_rows(n: int, share: float, seed: int) -> pd.DataFrame:
    """Shoppers who convert (`share` of rows) write buying words; the others browsing words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        buy = rng.random() < share
        words = WORDS["strong"] if buy else WORDS["weak"] + WORDS["medium"]
        text = f"{rng.choice(words)} {' '.join(rng.choice(FILLER, size=3))}"
        rows.append({"text": text, "label": "convert" if buy else "stay"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rare_run(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rare")
    rare_rows(400, 0.12, 0).to_csv(tmp / "train.csv", index=False)
    rare_rows(200, 0.12, 1).to_csv(tmp / "eval.csv", index=False)
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "data.train": str(tmp / "train.csv"),
            "data.eval": str(tmp / "eval.csv"),
            "output": str(tmp / "adapter"),
            "train.epochs": 3,
            "train.batch_size": 16,
            "method.name": "lora",
        },
    )
    return train(cfg, progress=False), tmp, cfg


def test_training_saves_and_prediction_applies_the_fitted_decision(rare_run):
    import peftkit

    result, tmp, cfg = rare_run
    m = result.manifest
    assert m.train.to_json()["class_weights"]["convert"] > 1, "12% converters: auto weights the rare class"
    assert m.threshold["positive"] == "convert" and 0 < m.threshold["value"] < 1
    assert m.calibration["method"] == "temperature" and m.calibration["temperature"] > 0
    assert m.calibration["ece_after"] <= m.calibration["ece_before"] + 1e-9
    assert (result.output / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # The manifest's metrics are the decision's on the held-out rows: recomputed from a reload, they match.
    from peftkit.data import load_splits

    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    loaded = peftkit.load(str(result.output))
    preds = loaded.predict(splits.eval_texts)
    p_convert = np.array([p.probabilities["convert"] for p in preds])
    labels = np.array([p.label for p in preds])
    np.testing.assert_array_equal(labels == "convert", p_convert >= m.threshold["value"])
    accuracy = float((labels == np.array([splits.labels[i] for i in splits.eval_labels])).mean())
    assert accuracy == pytest.approx(m.metrics["accuracy"])
    assert m.metrics["ece"] == pytest.approx(m.calibration["ece_after"])


def test_an_adapter_without_a_fitted_decision_decodes_with_argmax(rare_run, tmp_path):
    """What adapters written before calibration and thresholds existed do: the manifest without those sections."""
    import json
    import shutil

    import peftkit

    result, tmp, cfg = rare_run
    old = tmp_path / "old"
    shutil.copytree(result.output, old)
    manifest = json.loads((old / "peftkit.json").read_text())
    del manifest["calibration"], manifest["threshold"]
    (old / "peftkit.json").write_text(json.dumps(manifest))
    texts = pd.read_csv(tmp / "eval.csv")["text"].tolist()[:50]
    loaded = peftkit.load(str(old))
    logits = loaded.logits(texts)
    preds = loaded.predict(texts)
    raw = softmax(logits.astype(np.float64))
    np.testing.assert_allclose(
        [p.probabilities["convert"] for p in preds], raw[:, 0], atol=1e-6
    )  # labels sort: convert, stay
    assert [p.label for p in preds] == [["convert", "stay"][i] for i in raw.argmax(axis=1)]


def test_a_bank_decodes_each_row_with_its_own_adapters_decision(rare_run, tmp_path):
    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.bank_build import build_bank

    result, tmp, cfg = rare_run
    bank_dir = tmp_path / "bank"
    build_bank(bank_dir, {"global": result.output}, segments={}, segment_column=None)
    bank = AdapterBank.open(bank_dir)
    texts = pd.read_csv(tmp / "eval.csv")["text"].tolist()[:30]
    import peftkit

    alone = peftkit.load(str(result.output)).predict(texts)
    via_bank = bank.predict(texts, [None] * len(texts))
    assert [p.label for p in via_bank] == [p.label for p in alone]
    np.testing.assert_allclose(
        [p.probabilities["convert"] for p in via_bank], [p.probabilities["convert"] for p in alone], atol=1e-6
    )


def test_select_metric_the_task_does_not_report_is_refused_before_training(tiny_models, tmp_path):
    rare_rows(60, 0.3, 0).to_csv(tmp_path / "t.csv", index=False)
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "data.train": str(tmp_path / "t.csv"),
            "output": str(tmp_path / "a"),
            "train.max_steps": 2,
            "train.select_metric": "mae",
        },
    )
    with pytest.raises(PeftkitError, match="train.select_metric=mae"):
        train(cfg, progress=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("seed", [0, 4])
def test_a_temperature_is_kept_only_where_it_does_not_raise_the_held_out_ece(seed):
    # 60 rows whose probabilities are the truth: seed 0's log-loss optimum (T 1.44) lowers the binned error
    # (0.124 -> 0.080) and is kept; seed 4's (T 0.81) would raise it (0.060 -> 0.092) and is not.
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.05, 0.95, 60)
    y = (rng.random(60) < p1).astype(int)
    logits = np.log(np.column_stack([1 - p1, p1]))
    decision, calibration, _ = fit_decision(
        TASKS["classification"], logits, y, labels=["a", "b"], calibrate=True,
        objective=Objective.parse("none"), positive=1, weights=None,
    )  # fmt: skip
    if seed == 0:
        assert decision.temperature == pytest.approx(1.435, abs=1e-3) and "skipped" not in calibration
    else:
        assert (
            decision.temperature == 1.0
            and "would raise the held-out ECE (0.060 -> 0.092)" in calibration["skipped"]
        )
    assert calibration["ece_after"] <= calibration["ece_before"]
