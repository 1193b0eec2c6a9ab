"""Each PEFT method on the packaged real reviews, one fixed budget: quality, trainable parameters, adapter size and
training speed, with the majority-class accuracy as the floor every method must clear.

    python benchmarks/methods/run.py --model minilm-l6 --rows 4000 --out benchmarks/methods/results/minilm-l6.json
    python benchmarks/methods/run.py --model smollm2-135m --rows 800 --max-length 64 \
        --out benchmarks/methods/results/smollm2-135m.json

Speed is reported as samples/s and as a ratio to LoRA measured in the same run (machines are noisy; ratios are
comparable across machines, absolute figures are not). `peftkit compare` (a later issue) grows this into seeds,
confidence intervals and memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from peftkit.artifacts.manifest import package_versions
from peftkit.config import load_config
from peftkit.methods import METHODS
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--quant", default="none")
    p.add_argument(
        "--rows", type=int, default=4000, help="training rows (seeded subsample of the deduplicated reviews)"
    )
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--set", action="append", default=[], help="extra key=value overrides for every method")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    quiet_libraries()

    from peftkit.config import parse_set

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            cfg = load_config(
                None,
                {
                    "model.name": args.model,
                    "model.quant": args.quant,
                    "method.name": method,
                    "data.max_train_rows": args.rows,
                    "data.max_eval_rows": args.eval_rows,
                    "data.max_length": args.max_length,
                    "train.batch_size": args.batch_size,
                    "train.epochs": args.epochs,
                    "output": f"{tmp}/{method}",
                    **parse_set(args.set),
                },
            )
            started = time.perf_counter()
            result = train(cfg, progress=False)
            m = result.manifest.to_json()
            runs.append(
                {
                    "method": method,
                    "lr": cfg.lr,
                    "metrics": m["metrics"],
                    "trainable_params": m["trainable_params"],
                    "trainable_percent": m["trainable_percent"],
                    "adapter_bytes": m["adapter_bytes"],
                    "train_samples_per_second": m["train"]["samples_per_second"],
                    "train_seconds": m["train"]["seconds"],
                    "wall_seconds": time.perf_counter() - started,
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    lora = next((r for r in runs if r["method"] == "lora"), runs[0])
    for r in runs:
        r["speed_vs_lora"] = r["train_samples_per_second"] / lora["train_samples_per_second"]
    report = {
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "quant": args.quant,
        "train_rows": args.rows,
        "eval_rows": args.eval_rows,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'method':<11}{'accuracy':>9}{'majority':>9}{'macro_f1':>9}{'trainable':>11}{'adapter MB':>11}"
        f"{'samples/s':>10}{'vs lora':>8}"
    )
    for r in runs:
        mt = r["metrics"]
        print(
            f"{r['method']:<11}{mt['accuracy']:>9.3f}{mt['majority_accuracy']:>9.3f}{mt['macro_f1']:>9.3f}"
            f"{r['trainable_params']:>11,}{r['adapter_bytes'] / 1e6:>11.2f}{r['train_samples_per_second']:>10.1f}"
            f"{r['speed_vs_lora']:>8.2f}"
        )


if __name__ == "__main__":
    main()
