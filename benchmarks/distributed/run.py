"""Data-parallel training throughput: the same `peftkit train` command in 1 process and under torchrun with 2.

    python benchmarks/distributed/run.py --out benchmarks/distributed/results/minilm-l6_cpu.json

Both runs use the same global batch (1 x 16 vs 2 x 8), steps, data and model, one after the other in this script.
Figures: training samples/s from each run's manifest (Trainer's own count over the training loop) and the wall time
of the whole command (model loading included); and a bank (global + 2 segment adapters) trained in 1 process, in 2
processes that each train one segment adapter (segments.parallel=segments), and in 2 processes that train every
adapter data-parallel (segments.parallel=data).
On a CPU machine the processes share the same cores (torchrun gives each OMP_NUM_THREADS = cores / processes here),
so this measures the overhead of the DDP path, not a speed-up from more hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftkit.artifacts.manifest import package_versions


def run(args: list[str], procs: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, "-m", "peftkit", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        cmd = [*launcher, "--master-port", str(port), "-m", "peftkit", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    common = [
        "--model",
        args.model,
        "--data",
        "builtin:reviews",
        "--text-column",
        "text",
        "--label-column",
        "label",
    ]
    common += ["--max-steps", str(args.steps), "--max-length", "64", "--set", "data.max_train_rows=2000"]
    common += ["--set", "data.max_eval_rows=200"]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 2):
            out = Path(tmp) / f"adapter-{procs}"
            batch = args.global_batch // procs
            wall = run(
                ["train", *common, "--batch-size", str(batch), "--output", str(out)],
                procs,
                max(1, cores // procs),
            )
            m = json.loads((out / "peftkit.json").read_text())
            figures[f"{procs}_process"] = {
                "per_process_batch": batch,
                "threads_per_process": max(1, cores // procs),
                "steps": m["train"]["steps"],
                "train_samples_per_second": m["train"]["samples_per_second"],
                "train_seconds": m["train"]["seconds"],
                "command_wall_seconds": wall,
                "accuracy": m["metrics"]["accuracy"],
            }
            print(json.dumps(figures[f"{procs}_process"]), file=sys.stderr, flush=True)
        figures["two_over_one_samples_per_second"] = (
            figures["2_process"]["train_samples_per_second"]
            / figures["1_process"]["train_samples_per_second"]
        )
        bank_steps = ["--max-steps", str(args.steps // 2)]
        for procs, parallel in ((1, "segments"), (2, "segments"), (2, "data")):
            out = Path(tmp) / f"bank-{procs}-{parallel}"
            bank_args = ["train", *common, *bank_steps, "--batch-size", str(args.global_batch // procs)]
            bank_args += ["--segment-column", "platform", "--set", "segments.values=[hotel,book]"]
            bank_args += [
                "--set",
                f"segments.parallel={parallel}",
                "--min-segment-rows",
                "50",
                "--output",
                str(out),
            ]
            key = f"bank_{procs}_process" + (f"_{parallel}_parallel" if procs > 1 else "")
            figures[f"{key}_wall_seconds"] = run(bank_args, procs, max(1, cores // procs))
            print(json.dumps({key: figures[f"{key}_wall_seconds"]}), file=sys.stderr, flush=True)
        one = figures["bank_1_process_wall_seconds"]
        figures["bank_speedup_segments_parallel"] = (
            one / figures["bank_2_process_segments_parallel_wall_seconds"]
        )
        figures["bank_speedup_data_parallel"] = one / figures["bank_2_process_data_parallel_wall_seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpus": cores},
        "versions": package_versions(),
        "figures": figures,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
