"""The real-data recipes as shipped, over the same 3 seeds as `real_baselines.py`, printed beside its baselines.

Each recipe trains once per seed with ``train.seed`` set to it, which sets the split and the subsample exactly as
`real_baselines.py` does for that seed, so every adapter row is scored on the held-out rows its baselines were
scored on. Mean and 95% t-interval over the seeds, as there.

    python benchmarks/tasks/real_recipes.py --baselines benchmarks/tasks/results/real_baselines.json \
        --out benchmarks/tasks/results/real_recipes.json

``--reuse`` takes the runs of some seeds from an earlier file of single runs (``real_recipes_seed42.json``) instead
of training them again; ``--set`` overrides a recipe key for every run (e.g. ``model.dtype=float32``, to match the
dtype of reused runs). The results file is rewritten after each task, so an interrupted run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from real_baselines import RECIPES, SEEDS, summarise

from peftkit import models
from peftkit.artifacts.manifest import package_versions
from peftkit.config import load_config
from peftkit.recipes import recipe_path
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train

METRICS = ("accuracy", "auc", "macro_f1", "mae", "spearman", "rmse")


def run(recipe: str, seed: int, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(recipe_path(recipe), {**overrides, "train.seed": seed, "output": out})
        m = train(cfg, progress=False).manifest.to_json()
    return {
        "seed": seed,
        "metrics": {k: v for k, v in m["metrics"].items() if isinstance(v, float | int)},
        "dtype": m["dtype"],
        "train_seconds": m["train"]["seconds"],
        "trainable_params": m["trainable_params"],
        "source": "this run",
    }


def reused(path: Path) -> dict[tuple[str, int], dict]:
    """(recipe, seed) -> run, from a file of single runs (``results`` rows with recipe, seed, metrics)."""
    record = json.loads(path.read_text())
    return {
        (r["recipe"], r["seed"]): {
            "seed": r["seed"],
            "metrics": r["metrics"],
            "dtype": r.get(
                "dtype", "float32 (written before dtype was recorded: auto then meant float32 on CPU)"
            ),
            "train_seconds": r["train_seconds"],
            "trainable_params": r["trainable_params"],
            "source": f"{path.name}: {r['command']}",
        }
        for r in record["results"]
    }


def print_table(results: dict, baselines: dict) -> None:
    print(f"{'task':<18}{'metric':<10}{'row':<30}{'mean':>8}{'± 95%':>8}")
    for name, r in results.items():
        rows = {"peftkit " + r["recipe"].split("/")[1]: r["metrics"]}
        rows.update(baselines.get(name, {}).get("scores", {}))
        for metric in METRICS:
            for row, m in rows.items():
                if metric in m:
                    print(
                        f"{name:<18}{metric:<10}{row[:29]:<30}{m[metric]['mean']:>8.3f}{m[metric]['ci95']:>8.3f}"
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(RECIPES), help="comma-separated; default: all")
    p.add_argument("--baselines", type=Path, help="real_baselines.py's JSON, printed beside the adapter rows")
    p.add_argument(
        "--reuse", type=Path, help="take the runs it holds (recipe, seed) instead of training them"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for every run"
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    quiet_libraries()
    overrides = dict(kv.split("=", 1) for kv in args.set)
    earlier = reused(args.reuse) if args.reuse else {}
    results = {}
    for name in args.tasks.split(","):
        recipe = RECIPES[name][0]
        runs = []
        for seed in SEEDS:
            started = time.perf_counter()
            runs.append(earlier.get((recipe, seed)) or run(recipe, seed, overrides))
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        results[name] = {
            "recipe": recipe,
            "command": f"peftkit train --recipe {recipe} --set train.seed=SEED",
            "dtype": sorted({r["dtype"] for r in runs}),
            "trainable_params": runs[0]["trainable_params"],
            "metrics": summarise([r["metrics"] for r in runs]),
            "train_seconds": [r["train_seconds"] for r in runs],
            "runs": runs,
        }
        write(args, overrides, results)
    baselines = json.loads(args.baselines.read_text())["results"] if args.baselines else {}
    print_table(results, baselines)


def write(args, overrides: dict, results: dict) -> None:
    record = {
        "command": "python " + " ".join(sys.argv),
        "synthetic": False,
        "seeds": list(SEEDS),
        "interval": "95% t-interval half-width over the seeds (t with n-1 = 2 df)",
        "overrides": overrides,
        "machine": {"bf16_units": models.cpu_bf16_units(), "cores": "2"},
        "versions": package_versions(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
