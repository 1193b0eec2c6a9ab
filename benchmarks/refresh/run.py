"""Keeping an adapter fresh on real time-ordered data: never refreshing vs refreshing behind the gate vs retraining
from scratch, period by period, on CDNOW customers ordered by the date of their first purchase.

CDNOW's customers all made their first purchase in the first 84 days of 1997. ``--task conversion`` reads that day
(``first_day``); ``--task churn`` derives it from the tenure at the cut-off (``first_day = max tenure - tenure + 1``:
the churn table has no date column, every customer's features are taken at the same cut-off). The 84 days are cut into
four periods of three weeks, the cohorts of customers acquired in them. An adapter trains on period 1 (the task's
shipped recipe, ``--rows`` sampled rows). When period p's rows have arrived:

- ``never``: the period-1 adapter keeps serving;
- ``gate``: ``peftkit refresh`` (`peftkit.refresh.run.refresh`, one adapter) trains a candidate from the serving
  adapter on period p's rows and promotes it only if the gate passes on the newest 20% of them (by first_day);
- ``scratch``: a fresh adapter trains on period p's rows alone.

Each arm's serving adapter is then scored on period p+1 (``--score-rows`` sampled rows, its own decision): what the
next period brings. At every refresh a second candidate is trained on the same rows with the labels of its training
part shuffled (the gate's newest rows keep theirs) and must be refused. Quality is macro-F1 (the task's primary
metric), AUC and ECE; cost is the wall time of each arm's step.

    python benchmarks/refresh/run.py --task churn --out benchmarks/refresh/results/cdnow_churn.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from peftkit.artifacts.manifest import package_versions, read_manifest
from peftkit.config import load_config
from peftkit.data import read_table
from peftkit.inference.predictor import load_predictor
from peftkit.recipes import recipe_path
from peftkit.refresh.rows import encoded
from peftkit.refresh.run import refresh
from peftkit.runtime import quiet_libraries
from peftkit.tasks import TASKS
from peftkit.training.loop import train

TASKS_ = {  # --task -> (recipe, label column)
    "conversion": ("conversion/minilm-l6_lora_cdnow", "conversion"),
    "churn": ("churn/minilm-l6_lora_cdnow", "churn"),
}
PERIODS = [(1, 21), (22, 42), (43, 63), (64, 84)]  # first_day ranges, three weeks each
HOLDOUT = 0.2


def period_rows(frame: pd.DataFrame, p: int, n: int, seed: int) -> pd.DataFrame:
    lo, hi = PERIODS[p]
    rows = frame[(frame["first_day"] >= lo) & (frame["first_day"] <= hi)]
    return rows.sample(n=min(n, len(rows)), random_state=seed).reset_index(drop=True)


def shuffled_older(rows: pd.DataFrame, seed: int, label: str) -> pd.DataFrame:
    """The labels of the rows refresh trains on shuffled; the newest HOLDOUT share (the gate's) left true."""
    out = rows.copy()
    older = (out["first_day"] < out["first_day"].quantile(1 - HOLDOUT)).to_numpy()
    out.loc[older, label] = np.random.default_rng(seed).permutation(out.loc[older, label].to_numpy())
    return out


def score(folder: Path, rows: pd.DataFrame) -> dict:
    manifest = read_manifest(folder)
    texts, y, _ = encoded(rows, manifest)
    task = TASKS[manifest.task]
    metrics = task.metrics(y, task.decode(load_predictor(folder).logits(texts), manifest.decision))
    return {k: round(metrics[k], 4) for k in ("macro_f1", "auc", "ece", "accuracy")}


def fresh(recipe: str, train_rows: pd.DataFrame, out: Path, seed: int) -> tuple[Path, float]:
    data = out.with_suffix(".csv")
    train_rows.to_csv(data, index=False)
    cfg = load_config(
        recipe_path(recipe),
        {"data.train": str(data), "data.max_train_rows": None, "train.seed": seed, "output": str(out)},
    )
    started = time.perf_counter()
    train(cfg, progress=False)
    return out, time.perf_counter() - started


def run_seed(task: str, frame: pd.DataFrame, seed: int, rows: int, score_rows: int, work: Path) -> dict:
    recipe, label = TASKS_[task]
    first, seconds = fresh(recipe, period_rows(frame, 0, rows, seed), work / "p1", seed)
    serving = {"never": first, "gate": first, "scratch": first}
    periods, refusals = [], []
    for p in range(1, len(PERIODS) - 1):  # the last period only scores
        new = period_rows(frame, p, rows, seed)
        costs = {"never": 0.0}
        # period p's rows have arrived: refresh behind the gate, retrain from scratch; then serve period p+1
        csv = work / f"p{p + 1}.csv"
        new.to_csv(csv, index=False)
        out = work / f"gate-p{p + 1}"
        report = refresh(csv, adapter=serving["gate"], output=out, time_column="first_day", holdout=HOLDOUT)
        costs["gate"] = report.seconds
        decision = report.results[0]
        if decision["decision"] == "promoted":
            serving["gate"] = out
        bad_csv = work / f"p{p + 1}-shuffled.csv"
        shuffled_older(new, seed, label).to_csv(bad_csv, index=False)
        bad = refresh(
            bad_csv, adapter=serving["gate"], time_column="first_day", holdout=HOLDOUT, dry_run=True
        )
        refusals.append(
            {
                "period": p + 1,
                "refused": bad.results[0]["decision"] == "kept",
                "gate": bad.results[0].get("gate"),
            }
        )
        serving["scratch"], costs["scratch"] = fresh(recipe, new, work / f"scratch-p{p + 1}", seed)
        target = period_rows(frame, p + 1, score_rows, seed + 1000)
        periods.append(
            {
                "trained_through_period": p + 1,
                "scored_on_period": p + 2,
                "gate_decision": decision["decision"],
                "gate": decision.get("gate"),
                "scores": {arm: score(folder, target) for arm, folder in serving.items()},
                "step_seconds": {k: round(v, 1) for k, v in costs.items()},
            }
        )
        print(f"seed {seed} period {p + 2}: {periods[-1]['scores']}", flush=True)
    return {
        "seed": seed,
        "first_adapter_seconds": round(seconds, 1),
        "periods": periods,
        "shuffled": refusals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", choices=list(TASKS_), default="churn")
    parser.add_argument("--seeds", nargs="*", type=int, default=[42, 43])
    parser.add_argument("--rows", type=int, default=600, help="training rows per period (a seeded sample)")
    parser.add_argument(
        "--score-rows", type=int, default=800, help="rows of the next period each arm is scored on"
    )
    args = parser.parse_args()
    quiet_libraries()
    frame = read_table(f"builtin:cdnow/{args.task}")
    if (
        "first_day" not in frame.columns
    ):  # churn: the day of the first purchase, from the tenure at the cut-off
        frame["first_day"] = frame["tenure_days"].max() - frame["tenure_days"] + 1
    record = {
        "command": "python " + " ".join(sys.argv),
        "task": args.task,
        "recipe": TASKS_[args.task][0],
        "periods": [f"first_day {lo}-{hi}" for lo, hi in PERIODS],
        "holdout": f"the newest {HOLDOUT:.0%} of each period's rows by first_day",
        "versions": package_versions(),
        "runs": [],
    }
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as work:
            record["runs"].append(run_seed(args.task, frame, seed, args.rows, args.score_rows, Path(work)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
    table = {}
    for run in record["runs"]:
        for period in run["periods"]:
            for arm, s in period["scores"].items():
                table.setdefault((period["scored_on_period"], arm), []).append(s["macro_f1"])
    for (period, arm), values in sorted(table.items()):
        print(f"period {period} {arm:<8} macro-F1 {np.mean(values):.3f} over {len(values)} seeds")
    refused = [r["refused"] for run in record["runs"] for r in run["shuffled"]]
    print(f"shuffled-label candidates refused: {sum(refused)} of {len(refused)}")


if __name__ == "__main__":
    main()
