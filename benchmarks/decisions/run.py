"""Scores a shop can act on, on every real dataset: today's defaults vs the new ones, next to gradient boosting and
TF-IDF, with calibration measured on rows nothing was fitted on.

For each dataset and seed, the recipe's rows are split as training splits them (the seed sets the split); the held-out
side is then cut in two seeded halves:

- **fit** rows: what training holds out (best epoch, temperature, threshold are chosen on them), as in a real run;
- **test** rows: untouched, every figure below is measured on them.

Arms, trained on the same rows:

- ``before``: the defaults before issue 32 (best epoch by accuracy/MAE, no class weights, no calibration, argmax):
  ``train.select_metric=accuracy`` (``mae`` for ordinal), ``train.class_weights=none``, ``decision.calibrate=false``,
  ``decision.threshold=none``;
- ``now``: today's defaults (macro-F1/MAE selection, class weights below a fifth, temperature, macro-F1 threshold);
- ``gbm`` (CDNOW: gradient boosting on the numeric behaviour columns) and ``tfidf`` (TF-IDF + logistic regression on
  the adapter's text), each with its own temperature and its own macro-F1 threshold fitted on the same fit rows.

Threshold objectives side by side (binary datasets): the ``now`` adapter's test-row precision/recall/F1 for each
objective, every threshold chosen on the fit rows.

    python benchmarks/decisions/run.py --out benchmarks/decisions/results/decisions.json

The results file is rewritten after every dataset, so an interrupted run keeps what finished; ``--resume`` skips the
(dataset, seed) pairs already in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tasks"))
from real_baselines import gbm, tfidf_lr  # noqa: E402  (the same baselines as benchmarks/tasks)

from peftkit.artifacts.manifest import package_versions  # noqa: E402
from peftkit.config import load_config  # noqa: E402
from peftkit.data import load_splits  # noqa: E402
from peftkit.data.amazon import AMAZON_TASKS  # noqa: E402
from peftkit.data.cdnow import CDNOW_TASKS  # noqa: E402
from peftkit.recipes import recipe_path  # noqa: E402
from peftkit.runtime import quiet_libraries  # noqa: E402
from peftkit.tasks import TASKS  # noqa: E402
from peftkit.tasks.decide import fit_decision, positive_index  # noqa: E402
from peftkit.tasks.threshold import Objective, choose, rates  # noqa: E402
from peftkit.training.loop import train  # noqa: E402

DATASETS = {  # name -> (recipe, numeric columns for gradient boosting)
    "cdnow_conversion": ("conversion/minilm-l6_lora_cdnow", CDNOW_TASKS["conversion"].numeric_columns),
    "cdnow_churn": ("churn/minilm-l6_lora_cdnow", CDNOW_TASKS["churn"].numeric_columns),
    "cdnow_value": ("value_segment/minilm-l6_lora_cdnow", CDNOW_TASKS["value"].numeric_columns),
    "amazon_sentiment": ("reviews/minilm-l6_lora_amazon", []),
    "amazon_intensity": ("purchase_intent/minilm-l6_lora_amazon-intensity", []),
    "reviews": ("reviews/multilingual-e5-small_lora", []),
}
AMAZON = AMAZON_TASKS  # (imported for the record: the Amazon sets are text only)
SEEDS = (42, 43, 44)
BEFORE = {"train.class_weights": "none", "decision.calibrate": False, "decision.threshold": "none"}
OBJECTIVES = ("macro_f1", "f1", "precision:0.6", "recall:0.8", "top:0.2")
REPORTED = ("macro_f1", "accuracy", "auc", "pr_auc", "ece", "brier", "log_loss", "mae", "majority_macro_f1")


def halves(splits, seed: int):
    """(fit splits, test texts, test labels, test frame): the held-out rows cut into two seeded halves."""
    order = np.random.default_rng(seed).permutation(len(splits.eval_texts))
    fit, test = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    fit_splits = dataclasses.replace(
        splits,
        eval_texts=pick(splits.eval_texts, fit),
        eval_labels=pick(splits.eval_labels, fit),
        eval_frame=splits.eval_frame.iloc[fit].reset_index(drop=True),
    )
    return (
        fit_splits,
        pick(splits.eval_texts, test),
        np.asarray(pick(splits.eval_labels, test)),
        splits.eval_frame.iloc[test],
    )


def adapter_arm(cfg, splits, test_texts, y_test, overrides: dict) -> dict:
    """Train on `splits` (fit rows held out), then score the test rows with the adapter's own decision."""
    task = TASKS[cfg.task]
    with tempfile.TemporaryDirectory() as out:
        run_cfg = cfg.model_copy(deep=True)
        for key, value in overrides.items():
            section, name = key.split(".")
            setattr(getattr(run_cfg, section), name, value)
        run_cfg.output = out
        started = time.perf_counter()
        result = train(run_cfg, splits=splits, progress=False)
        seconds = time.perf_counter() - started
        logits_test = result.predictor.logits(test_texts)
        logits_fit = result.predictor.logits(splits.eval_texts)
        m = result.manifest
    decoded = task.decode(logits_test, m.decision)
    out = {
        "test": _pick(task.metrics(y_test, decoded)),
        "test_undecided": _pick(task.metrics(y_test, task.decode(logits_test))),  # argmax, no temperature
        "uncalibrated_test_ece": _ece_raw(task, logits_test, y_test),
        "calibration": m.calibration,
        "threshold": m.threshold,
        "selection": m.train.to_json().get("selection", {}).get("kept_step"),
        "class_weights": m.train.to_json().get("class_weights"),
        "train_seconds": round(seconds, 1),
    }
    if m.threshold is not None and task.name == "classification":
        out["objectives"] = objectives(logits_fit, np.asarray(splits.eval_labels), logits_test, y_test, m)
    return out


def objectives(logits_fit, y_fit, logits_test, y_test, m) -> dict:
    """Each threshold objective chosen on the fit rows, its precision/recall/F1 on the test rows."""
    task, pos = TASKS["classification"], m.threshold["positive_index"]
    p_fit = task.decode(logits_fit, m.decision).probs[:, pos]
    p_test = task.decode(logits_test, m.decision).probs[:, pos]
    out = {}
    for text in OBJECTIVES:
        value, why = choose((y_fit == pos).astype(int), p_fit, Objective.parse(text))
        out[text] = {
            "threshold": value,
            **(rates((y_test == pos).astype(int), p_test, value) if value is not None else {"skipped": why}),
        }
    return out


def baseline_arm(kind: str, labels, probs_fit, y_fit, probs_test, y_test, pos: int) -> dict:
    """A baseline's test metrics at argmax, and with its own temperature and F1 threshold fitted on the fit rows."""
    task = TASKS[kind]
    logits_fit, logits_test = np.log(np.clip(probs_fit, 1e-9, 1)), np.log(np.clip(probs_test, 1e-9, 1))
    decision, _, _ = fit_decision(
        task,
        logits_fit if kind == "classification" else _ordinal_logits(probs_fit),
        y_fit,
        labels=labels,
        calibrate=True,
        objective=Objective.parse("macro_f1" if kind == "classification" else "none"),
        positive=pos,
        weights=None,
    )
    if kind == "classification":
        plain = task.metrics(y_test, task.decode(logits_test))
        tuned = task.metrics(y_test, task.decode(logits_test, decision))
    else:
        plain = task.metrics(y_test, task.decode(_ordinal_logits(probs_test)))
        tuned = task.metrics(y_test, task.decode(_ordinal_logits(probs_test), decision))
    return {
        "argmax": _pick(plain),
        "own_threshold_calibrated": _pick(tuned),
        "temperature": decision.temperature,
    }


def _ordinal_logits(probs: np.ndarray) -> np.ndarray:
    """Class probabilities -> the cumulative logits an ordinal head would give (P(y > k)), for decoding alike."""
    above = np.clip(1 - np.cumsum(probs, axis=1)[:, :-1], 1e-6, 1 - 1e-6)
    return np.log(above / (1 - above))


def _ece_raw(task, logits, y) -> float | None:
    if not task.calibrates:
        return None
    from peftkit.tasks.calibration import ece

    return ece(y, task.class_probs(logits))


def _pick(metrics: dict) -> dict:
    return {k: round(float(v), 5) for k, v in metrics.items() if k in REPORTED}


def run_one(name: str, seed: int, rows: int) -> dict:
    recipe, numeric = DATASETS[name]
    cfg = load_config(
        recipe_path(recipe),
        {
            "train.seed": seed,
            "data.max_train_rows": rows,
            "data.max_eval_rows": 2000,
            "data.eval_fraction": 0.2,
        },
    )
    splits = load_splits(cfg.data, cfg.task, seed)
    fit_splits, test_texts, y_test, test_frame = halves(splits, seed)
    kind, labels = cfg.task, splits.labels
    record = {
        "recipe": recipe,
        "task": kind,
        "labels": labels,
        "rows": {
            "train": len(splits.train_texts),
            "fit": len(fit_splits.eval_texts),
            "test": len(test_texts),
        },
        "test_label_shares": (np.bincount(y_test, minlength=len(labels)) / len(y_test)).round(4).tolist(),
    }
    record["now"] = adapter_arm(cfg, fit_splits, test_texts, y_test, {})
    if kind == "ordinal":
        # Ordinal training is unchanged (MAE selection, no class weights either way): the same adapter, undecided.
        now = record["now"]
        record["before"] = {
            "test": now["test_undecided"],
            "uncalibrated_test_ece": now["uncalibrated_test_ece"],
        }
        record["before"]["same_adapter_as_now"] = True
    else:
        before = {**BEFORE, "train.select_metric": "accuracy"}
        record["before"] = adapter_arm(cfg, fit_splits, test_texts, y_test, before)
    pos = positive_index(labels, splits.train_labels, None) if len(labels) == 2 else 1
    y_train, y_fit = np.asarray(splits.train_labels), np.asarray(fit_splits.eval_labels)
    tfidf_fit = tfidf_lr(kind, splits.train_texts, y_train, fit_splits.eval_texts).probs
    tfidf_test = tfidf_lr(kind, splits.train_texts, y_train, test_texts).probs
    record["tfidf"] = baseline_arm(kind, labels, tfidf_fit, y_fit, tfidf_test, y_test, pos)
    if numeric:
        x_train = splits.train_frame[numeric].to_numpy(float)
        x_fit = fit_splits.eval_frame[numeric].to_numpy(float)
        x_test = test_frame[numeric].to_numpy(float)
        record["gbm"] = baseline_arm(
            kind,
            labels,
            gbm(kind, x_train, y_train, x_fit, seed).probs,
            y_fit,
            gbm(kind, x_train, y_train, x_test, seed).probs,
            y_test,
            pos,
        )
    return record


def summarise(per_seed: list[dict]) -> dict:
    """Mean and 95% t-interval half-width over seeds of every test figure of every arm."""
    from scipy import stats

    out: dict = {}

    def collect(path: tuple, values: list):
        values = [v for v in values if isinstance(v, int | float)]
        if not values:
            return
        mean = float(np.mean(values))
        half = (
            float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
            if len(values) > 1
            else None
        )
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = {
            "mean": round(mean, 4),
            "ci95": None if half is None else round(half, 4),
            "per_seed": values,
        }

    for arm in ("before", "now"):
        for metric in REPORTED:
            collect((arm, metric), [r[arm]["test"].get(metric) for r in per_seed])
        collect((arm, "uncalibrated_ece"), [r[arm]["uncalibrated_test_ece"] for r in per_seed])
    for arm in ("tfidf", "gbm"):
        for variant in ("argmax", "own_threshold_calibrated"):
            for metric in REPORTED:
                collect((arm, variant, metric), [r[arm][variant].get(metric) for r in per_seed if arm in r])
    if all("objectives" in r["now"] for r in per_seed):
        for text in OBJECTIVES:
            for k in ("precision", "recall", "f1", "positive_share"):
                collect(("objectives", text, k), [r["now"]["objectives"][text].get(k) for r in per_seed])
    return out


def print_table(name: str, s: dict) -> None:
    def cell(node):
        if not node:
            return "-"
        ci = node["ci95"]
        return f"{node['mean']:.3f}" + (f" ± {ci:.3f}" if ci is not None else "")

    print(f"\n{name}")
    for metric in ("macro_f1", "auc", "ece", "accuracy", "mae"):
        row = [
            cell(s.get("before", {}).get(metric)),
            cell(s.get("now", {}).get(metric)),
            cell(s.get("gbm", {}).get("own_threshold_calibrated", {}).get(metric)),
            cell(s.get("tfidf", {}).get("own_threshold_calibrated", {}).get(metric)),
        ]
        if any(c != "-" for c in row):
            print(f"  {metric:<10} before {row[0]:<16} now {row[1]:<16} gbm {row[2]:<16} tfidf {row[3]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--rows", type=int, default=1000, help="training rows per run (a seeded subsample)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    record = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    record.update(
        {
            "command": "python " + " ".join(sys.argv),
            "seeds": args.seeds,
            "train_rows_cap": args.rows,
            "interval": "95% t-interval half-width over the seeds",
            "split": "the recipe's split with data.eval_fraction=0.2; held-out rows cut in two seeded halves: fit "
            "(training's held-out rows: epoch, temperature, threshold) and test (every figure here)",
            "versions": package_versions(),
        }
    )
    results = record.setdefault("results", {})
    for name in args.datasets:
        runs = results.setdefault(name, {"runs": []})["runs"]
        done = {r["seed"] for r in runs}
        for seed in args.seeds:
            if seed in done:
                continue
            started = time.perf_counter()
            runs.append({"seed": seed, **run_one(name, seed, args.rows)})
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
            results[name]["summary"] = summarise(runs)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1))
        print_table(name, results[name]["summary"])


if __name__ == "__main__":
    main()
