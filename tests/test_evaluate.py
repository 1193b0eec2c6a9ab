"""``peftkit evaluate`` on tiny models: it scores exactly as ``peftkit predict`` does (a two-label adapter with its
fitted threshold, a bank of questions with a two-segment question), its figures match hand counts, per-segment rows
add up to the overall support, and bad labels, a missing label column or a non-empty output folder are one-line errors
that write nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.evaluation import evaluate
from peftkit.evaluation.labels import Target, read_truth
from peftkit.evaluation.metrics import lift, per_class
from peftkit.inference.bank_build import build_questions
from peftkit.tasks import TASKS
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.conftest import intent_rows

runner = CliRunner()


def users(n: int, seed: int = 0) -> pd.DataFrame:
    """`intent_rows` plus a binary ``buyer`` label (strong intent buys)."""
    rows = intent_rows(n, seed)
    rows["buyer"] = np.where(rows["label"] == "strong", "yes", "no")
    return rows


@pytest.fixture(scope="module")
def shop(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """A two-label adapter (label column ``buyer``), a two-segment bank (``label``, by ``platform``), the bank of
    both questions, and a labelled file of new rows."""
    root = tmp_path_factory.mktemp("evaluate")
    users(120).to_csv(root / "train.csv", index=False)

    def fit(name: str, keys: dict, run=train) -> Path:
        common = {"model.name": str(tiny_models["bert"]), "data.train": str(root / "train.csv")}
        common |= {"train.max_steps": 4, "train.batch_size": 8, "train.lr": 5e-2, "output": str(root / name)}
        return run(load_config(None, {**common, **keys}), progress=False).output

    buyer = fit("buyer", {"data.label_column": "buyer"})
    intent = fit("intent", {"segments.column": "platform", "segments.min_rows": 10}, run=train_bank)
    labelled = users(40, seed=7)
    labelled.loc[[2, 9], "buyer"] = ""  # empty labels: skipped and counted
    labelled.to_csv(root / "labelled.csv", index=False)
    bank = build_questions(root / "shop", {"buyer": buyer, "intent": intent})
    return {"buyer": buyer, "intent": intent, "bank": bank, "labelled": root / "labelled.csv", "root": root}


def invoke(args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_adapter_accuracy_equals_predict_and_a_hand_count(shop, tmp_path):
    predicted = invoke(
        ["predict", "--adapter", shop["buyer"], "--data", shop["labelled"], "--output", tmp_path / "p.csv"]
    )
    assert predicted.exit_code == 0, predicted.stderr
    out = tmp_path / "eval"
    result = invoke(
        ["evaluate", "--adapter", shop["buyer"], "--data", shop["labelled"], "--output", out, "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds only metrics.json; progress went to stderr
    assert report == json.loads((out / "metrics.json").read_text())

    preds = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    labelled = preds["buyer"] != ""
    hand = (preds["prediction"] == preds["buyer"])[labelled].mean()
    q = report["questions"]["default"]
    assert q["overall"]["accuracy"] == pytest.approx(hand)
    assert (
        q["rows"] == {"scored": 38, "empty_label": 2, "unanswered": 0}
        and report["skipped"]["default"]["empty_label"] == 2
    )
    assert q["overall"]["support"] == 38 and list(q["overall"])[0] == "macro_f1"  # the primary metric first
    # per-class recall of "yes" by hand; the same labels and probabilities as predict, the label beside them
    yes = labelled & (preds["buyer"] == "yes")
    assert q["per_class"]["yes"]["recall"] == pytest.approx(
        (preds["prediction"] == "yes")[yes].sum() / yes.sum()
    )
    assert q["per_class"]["yes"]["support"] == yes.sum()
    written = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert (written["prediction"] == preds["prediction"]).all()
    np.testing.assert_allclose(written["prob_yes"].astype(float), preds["prob_yes"].astype(float))
    assert list(written.columns).index("true_label") == list(written.columns).index("prediction") - 1
    assert q["positive"] == "yes" and set(q["lift"]) >= {"top_10", "top_20"} and "auc" in q["overall"]
    for name in ("confusion", "reliability", "gains"):
        assert (out / f"{name}-default.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lift_capture_and_per_class_on_hand_made_vectors():
    positive = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    got = lift(positive, score)
    assert got["positive_rate"] == pytest.approx(0.3)
    # top 10%: 1 row, a positive -> rate 1.0, lift 1 / 0.3, capture 1 of 3; top 20%: 2 rows, 1 positive
    assert got["top_10"] == {"share": 0.1, "rows": 1, "positives": 1, "positive_rate": 1.0,
                                  "lift": pytest.approx(10 / 3), "capture": pytest.approx(1 / 3)}  # fmt: skip
    assert got["top_20"]["lift"] == pytest.approx(0.5 / 0.3) and got["top_20"]["capture"] == pytest.approx(
        1 / 3
    )
    table = per_class(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), ["no", "yes"])
    assert table["yes"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                            "f1": pytest.approx(2 / 3), "support": 3}  # fmt: skip
    assert table["no"]["recall"] == 0.5


def test_bank_segments_add_up_to_the_overall_support(shop, tmp_path):
    report = evaluate(str(shop["labelled"]), bank=shop["bank"], output=tmp_path / "eval")
    assert set(report["questions"]) == {"buyer", "intent"}
    intent = report["questions"]["intent"]
    assert intent["label_column"] == "label" and "mae" not in intent["overall"]
    assert set(intent["segments"]) == {"app", "web"}  # each platform answered by its own adapter
    assert sum(s["support"] for s in intent["segments"].values()) == intent["overall"]["support"] == 40
    values = intent["segment_values"]
    assert values["column"] == "platform"
    assert sum(s["support"] for s in values["values"].values()) == 40
    assert report["questions"]["buyer"]["overall"]["support"] == 38  # two empty labels
    frame = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype=str, keep_default_na=False)
    for name in ("intent", "buyer"):
        hand = (frame[name] == frame[f"{name}_true_label"])[frame[f"{name}_true_label"] != ""].mean()
        assert report["questions"][name]["overall"]["accuracy"] == pytest.approx(hand)
    assert (tmp_path / "eval" / "confusion-intent.png").is_file() and not (
        tmp_path / "eval" / "gains-intent.png"
    ).exists()


@pytest.mark.parametrize(
    "cells,flag,message",
    [
        (
            {"buyer": "maybe", "index": 5},
            [],
            r"labelled\.csv column 'buyer' has label\(s\) .*'maybe' \(first at row 6\)",
        ),
        (
            {},
            ["--label-column", "bought"],
            r"labelled\.csv has no label column 'bought' .*--label-column NAME",
        ),
    ],
)
def test_bad_labels_are_one_line_errors_that_write_nothing(shop, tmp_path, cells, flag, message):
    frame = pd.read_csv(shop["labelled"], dtype=str, keep_default_na=False)
    if cells:
        frame.loc[[cells["index"], 30], "buyer"] = cells["buyer"]
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    out = tmp_path / "eval"
    result = invoke(
        ["evaluate", "--adapter", shop["buyer"], "--data", tmp_path / "labelled.csv", "--output", out, *flag]
    )
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() and not any(p.name.startswith(".eval") for p in tmp_path.iterdir())


def test_bank_label_columns_per_question_and_a_regression_label_that_is_no_number(shop, tmp_path):
    with pytest.raises(PeftkitError, match=r"name the question: --label-column buyer=x"):
        evaluate(str(shop["labelled"]), bank=shop["bank"], output=tmp_path / "o", label_columns=["x"])
    with pytest.raises(
        PeftkitError, match=r"no label column 'x' for question 'buyer'.*--label-column buyer=COLUMN"
    ):
        evaluate(str(shop["labelled"]), bank=shop["bank"], output=tmp_path / "o", label_columns=["buyer=x"])
    target = Target("power", TASKS["regression"], None, "score", "", "prediction", None, None)
    frame = pd.DataFrame({"score": ["0.5", "", "high"]})
    with pytest.raises(
        PeftkitError, match=r"f\.csv row 3: label 'high' in column 'score' is not a finite number"
    ):
        read_truth(frame, target, "f.csv", many=False)


def test_a_non_empty_output_folder_is_refused_without_overwrite(shop, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["evaluate", "--adapter", shop["buyer"], "--data", shop["labelled"], "--output", out]
    result = invoke(args)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and (out / "keep.txt").exists()
    result = invoke([*args, "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert (
        "macro_f1" in result.stdout and not (out / "keep.txt").exists() and (out / "metrics.json").is_file()
    )


@pytest.mark.parametrize("task,keys", [("ordinal", {"data.labels": ["weak", "medium", "strong"]}),
                                       ("regression", {"data.label_column": "score"})])  # fmt: skip
def test_ordinal_and_regression_figures_match_a_hand_count(tiny_models, tmp_path, task, keys):
    intent_rows(100).to_csv(tmp_path / "t.csv", index=False)
    common = {"model.name": str(tiny_models["bert"]), "data.train": str(tmp_path / "t.csv"), "task": task}
    cfg = load_config(None, {**common, "train.max_steps": 2, "output": str(tmp_path / "a"), **keys})
    adapter = train(cfg, progress=False).output
    rows = intent_rows(30, seed=4)
    rows.loc[3, ["label", "score"]] = None
    rows.to_csv(tmp_path / "e.csv", index=False)
    q = evaluate(str(tmp_path / "e.csv"), adapter=adapter, output=tmp_path / "ev")["questions"]["default"]
    frame = pd.read_csv(tmp_path / "ev" / "predictions.csv").dropna(subset=["true_label"])
    assert q["rows"] == {"scored": 29, "empty_label": 1, "unanswered": 0} and list(q["overall"])[:2] == [
        "mae",
        "support",
    ]
    if task == "regression":
        error = frame["prediction"] - frame["true_label"]
        assert q["overall"]["mae"] == pytest.approx(error.abs().mean())
        assert q["overall"]["rmse"] == pytest.approx(np.sqrt((error**2).mean()))
        assert "per_class" not in q and not list((tmp_path / "ev").glob("*.png"))
    else:
        rank = {"weak": 0, "medium": 1, "strong": 2}
        hand = (frame["prediction"].map(rank) - frame["true_label"].map(rank)).abs().mean()
        assert q["overall"]["mae"] == pytest.approx(hand) and "spearman" in q["overall"] and "lift" not in q
        assert (tmp_path / "ev" / "confusion-default.png").is_file()
