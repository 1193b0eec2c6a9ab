"""The user-analysis recipes against a tabular baseline, on the same held-out rows of the SYNTHETIC shopper data.

For each task: gradient boosting on the numeric behaviour fields only (what a team has without an LLM), the recipe's
adapter on text + serialised fields (as shipped), and the same adapter on the text alone.

    python benchmarks/tasks/run.py --out benchmarks/tasks/results/minilm-l6.json
    python benchmarks/tasks/run.py --model smollm2-135m --no-text-only --out benchmarks/tasks/results/smollm2-135m.json

The data is synthetic (docs/synthetic-data.md): these figures show whether the pipeline recovers signal the
generator put in the text, not how the recipes do on real shoppers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from peftkit.artifacts.manifest import package_versions
from peftkit.config import load_config
from peftkit.data import load_splits
from peftkit.data.synth import SYNTH_TASKS
from peftkit.recipes import recipe_path
from peftkit.runtime import quiet_libraries
from peftkit.tasks import TASKS
from peftkit.training.loop import train

RECIPES = {  # model -> task -> the shipped recipe that answers it
    "minilm-l6": {
        "purchase_intent": "purchase_intent/minilm-l6_adalora",
        "purchasing_power": "purchasing_power/minilm-l6_lora",
        "purchasing_power_score": "purchasing_power/minilm-l6_lora_score",
        "value_segment": "value_segment/minilm-l6_bottleneck",
        "churn": "churn/minilm-l6_lora",
        "conversion": "conversion/minilm-l6_lora",
    },
    "smollm2-135m": {
        "purchase_intent": "purchase_intent/smollm2-135m_adalora",
        "purchasing_power": "purchasing_power/smollm2-135m_lora",
        "value_segment": "value_segment/smollm2-135m_lora",
        "churn": "churn/smollm2-135m_prefix",
        "conversion": "conversion/smollm2-135m_lora",
    },
}


def tabular_baseline(cfg, splits) -> dict:
    """HistGradientBoosting on the numeric fields of the same train/eval rows, scored with the task's metrics."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    task = TASKS[cfg.task]
    spec = SYNTH_TASKS[cfg.data.label_column]
    x_train = splits.train_frame[spec.numeric_columns].astype(float).to_numpy()
    x_eval = splits.eval_frame[spec.numeric_columns].astype(float).to_numpy()
    if cfg.task == "regression":
        model = HistGradientBoostingRegressor(random_state=0).fit(x_train, splits.train_labels)
        logits = model.predict(x_eval)[:, None]
    else:
        model = HistGradientBoostingClassifier(random_state=0).fit(x_train, splits.train_labels)
        probs = model.predict_proba(x_eval)  # (N, K)
        if cfg.task == "ordinal":  # the ordinal head decodes P(y > k): feed it exactly those
            above = 1 - np.cumsum(probs, axis=1)[:, :-1]
            logits = np.log(np.clip(above, 1e-6, 1)) - np.log(np.clip(1 - above, 1e-6, 1))
        else:
            logits = np.log(np.clip(probs, 1e-9, 1))
    return task.metrics(np.asarray(splits.eval_labels), task.decode(logits.astype(np.float32)))


def adapter_run(cfg, out: str, **overrides) -> dict:
    cfg = load_config(recipe_path(cfg), {"output": out, **overrides})
    started = time.perf_counter()
    m = train(cfg, progress=False).manifest.to_json()
    return {
        "metrics": m["metrics"],
        "trainable_params": m["trainable_params"],
        "adapter_bytes": m["adapter_bytes"],
        "train_samples_per_second": m["train"]["samples_per_second"],
        "wall_seconds": time.perf_counter() - started,
    }


def write_results(out: Path, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python " + " ".join(sys.argv),
                "synthetic": True,
                "versions": package_versions(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6", choices=list(RECIPES))
    p.add_argument(
        "--tasks", default=None, help="comma-separated; default: every task the model has a recipe for"
    )
    p.add_argument(
        "--no-text-only", action="store_true", help="skip the text-only adapter (halves the run time)"
    )
    p.add_argument(
        "--text-only",
        action="store_true",
        help="run only the text-only adapter (fills that column where text + fields is already committed)",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.text_only and args.no_text_only:
        p.error("--text-only and --no-text-only leave nothing to run: pick one")
    quiet_libraries()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        recipes = RECIPES[args.model]
        for name in args.tasks.split(",") if args.tasks else recipes:
            recipe = recipes[name]
            cfg = load_config(recipe_path(recipe))
            splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
            row = {
                "task": name,
                "recipe": recipe,
                "kind": cfg.task,
                "method": cfg.method.name,
                "train_rows": len(splits.train_texts),
                "eval_rows": len(splits.eval_texts),
                "tabular_numeric_only": tabular_baseline(cfg, splits),
                "adapter_text_and_fields": None
                if args.text_only
                else adapter_run(recipe, f"{tmp}/{name}-full"),
                "adapter_text_only": None
                if args.no_text_only
                else adapter_run(recipe, f"{tmp}/{name}-text", **{"data.template": "{text}"}),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            write_results(args.out, results)  # after every task: a long run that dies keeps what it finished
    key = {"classification": "accuracy", "ordinal": "accuracy", "regression": "spearman"}
    print(
        f"{'task':<24}{'metric':>10}{'majority':>9}{'GBM nums':>9}{'text+fld':>9}{'text':>8}{'params':>9}{'MB':>6}"
    )
    for r in results:
        k = key[r["kind"]]
        base = r["tabular_numeric_only"].get("majority_accuracy", float("nan"))
        missing = {"metrics": {k: float("nan")}}
        full = r["adapter_text_and_fields"] or missing
        text = r["adapter_text_only"] or missing
        sizes = r["adapter_text_and_fields"] or r["adapter_text_only"]
        print(
            f"{r['task']:<24}{k:>10}{base:>9.3f}{r['tabular_numeric_only'][k]:>9.3f}{full['metrics'][k]:>9.3f}"
            f"{text['metrics'][k]:>8.3f}{sizes['trainable_params']:>9,}{sizes['adapter_bytes'] / 1e6:>6.2f}"
        )


if __name__ == "__main__":
    main()
