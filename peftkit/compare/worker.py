"""One compare run, in a process of its own: ``python -m peftkit.compare.worker JOB.json``.

A fresh process per run is what makes the memory figure honest (a process's peak RSS never goes down, and a
previous run's caches would count against the next) and what makes a compare resumable (a run either wrote its
result file or did not). The result is written to a temporary name and renamed, so a killed run leaves nothing.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.compare.measure import (
    PeakMemory,
    best_matmul_peak,
    flop_factor,
    frozen_matmul_params,
    inference_speed,
    matmul_peak,
    non_embedding_params,
    training_flops,
)
from peftkit.compare.plan import RunKey

SCHEMA = 1


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one run; returns the record the report reads (`docs/compare.md` lists its fields)."""
    from transformers import TrainerCallback

    from peftkit import models
    from peftkit.artifacts.manifest import package_versions
    from peftkit.config import RunConfig
    from peftkit.data import load_splits
    from peftkit.methods import METHODS

    started = time.perf_counter()
    key = RunKey(**job["key"])
    cfg = RunConfig.model_validate(job["config"])
    device = models.default_device()
    memory = PeakMemory(device)
    # The split is the recipe's, whatever this run's seed: every run reads the same rows.
    splits = load_splits(cfg.data, cfg.task, job["split_seed"])
    facts: dict[str, Any] = {}

    class Measure(TrainerCallback):
        """Counts the frozen base's matmul parameters and starts the training-phase memory peak."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            facts["process_peak_before_train_bytes"] = memory.peak()
            full = key.method == "tutorial" or (key.method in METHODS and METHODS[key.method].full_model)
            facts["base_trains"] = full
            facts["non_embedding_params"] = (
                non_embedding_params(model) if full else frozen_matmul_params(model)
            )
            memory.reset()

    if key.is_baseline:
        from peftkit.compare.baselines import run_baseline

        b = run_baseline(key.method, cfg, splits, [Measure()])
        train_peak = memory.peak()
        metrics, logits_fn = b.metrics, b.predict_logits
        params = {"trainable_params": b.trainable_params, "total_params": b.total_params}
        adapter_bytes, seconds, sps = b.adapter_bytes, b.seconds, b.samples_per_second
        tokens = {"real_tokens": b.real_tokens, "padded_tokens": b.padded_tokens}
        steps = None
    else:
        from peftkit.training.loop import train

        with tempfile.TemporaryDirectory() as tmp:
            cfg = cfg.model_copy(update={"output": str(Path(tmp) / key.id)})
            result = train(cfg, splits=splits, progress=False, callbacks=[Measure()])
        train_peak = memory.peak()
        m = result.manifest
        metrics, logits_fn = m.metrics, result.predictor.logits
        params = {"trainable_params": m.trainable_params, "total_params": m.total_params}
        adapter_bytes, seconds, sps = (
            m.adapter_bytes,
            m.train.seconds,
            m.train.samples_per_second,
        )
        tokens = {k: getattr(m.train, k) for k in ("real_tokens", "padded_tokens")}
        steps = m.train.steps
    # After training, not before: its tensors (384 MiB on GPU) would otherwise count in the run's memory peak.
    peak = matmul_peak(device, models.torch_dtype(cfg.model.dtype, device, cfg.model.quant, cfg.method.name))
    best = best_matmul_peak(device, peak)

    factor = flop_factor(
        base_trains=facts["base_trains"],
        gradient_checkpointing=cfg.train.gradient_checkpointing
        and not key.is_baseline,  # baselines never use it
    )
    n = facts["non_embedding_params"]
    real_flops = training_flops(n, factor, tokens["real_tokens"], seconds)
    padded_flops = training_flops(n, factor, tokens["padded_tokens"], seconds)
    record = {
        "schema": SCHEMA,
        "key": job["key"],
        "id": key.id,
        "baseline": key.is_baseline,
        "task": cfg.task,
        "metrics": metrics,
        **_segments(cfg.task, job.get("segment_column"), splits, logits_fn),
        **params,
        "trainable_percent": 100.0 * params["trainable_params"] / params["total_params"],
        "adapter_bytes": adapter_bytes,
        "memory": {
            "kind": memory.kind,
            "peak_bytes": max(train_peak, facts["process_peak_before_train_bytes"]),
            "train_peak_bytes": train_peak,
            "load_peak_bytes": facts["process_peak_before_train_bytes"],
        },
        "train": {
            "seconds": seconds,
            "steps": steps,
            "samples_per_second": sps,
            **tokens,
            "real_tokens_per_second": tokens["real_tokens"] / seconds,
            "padded_tokens_per_second": tokens["padded_tokens"] / seconds,
            "padding_share": 1 - tokens["real_tokens"] / max(1, tokens["padded_tokens"]),
        },
        "flops": {
            "formula": f"{factor} * N * tokens / train seconds",
            "factor": factor,
            "non_embedding_params": n,
            "real_per_second": real_flops,
            "computed_per_second": padded_flops,
            "matmul_peak_per_second": peak["flops"],
            "matmul_peak": peak,
            "real_share_of_peak": real_flops / peak["flops"],
            "computed_share_of_peak": padded_flops / peak["flops"],
            "best_peak": best,  # the fastest native dtype's peak: the headroom a run in another dtype leaves
            "real_share_of_best_peak": real_flops / best["flops"],
        },
        "inference": inference_speed(logits_fn, splits.eval_texts),
        "config": cfg.model_dump(mode="json"),
        "rows": {"train": len(splits.train_texts), "eval": len(splits.eval_texts)},
        "wall_seconds": time.perf_counter() - started,
        "device": _device(device),
        "versions": package_versions(),
    }
    return record


def _segments(task_name: str, column: str | None, splits, logits_fn) -> dict[str, Any]:
    """Per-segment metrics on the held-out rows and the worst segment, when the compare names a segment column."""
    if not column:
        return {}
    from peftkit.tasks import TASKS

    if column not in splits.eval_frame.columns:
        raise SystemExit(f"--segment-column {column}: the held-out rows have no such column")
    task = TASKS[task_name]
    values = splits.eval_frame[column].astype(str).to_numpy()
    decoded_all = logits_fn(splits.eval_texts)
    y = np.asarray(splits.eval_labels)
    per = {}
    for value in sorted(set(values)):
        rows = values == value
        per[value] = {"rows": int(rows.sum()), **task.metrics(y[rows], task.decode(decoded_all[rows]))}
    return {"segments": per}


def _device(device: str) -> dict[str, Any]:
    import torch

    info = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    info["cpus"] = os.cpu_count()
    return info


def main(argv: list[str]) -> int:
    from peftkit.artifacts.io import write_text_atomic
    from peftkit.runtime import quiet_libraries

    quiet_libraries()
    job = json.loads(Path(argv[0]).read_text())
    record = run(job)
    write_text_atomic(Path(job["out"]), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
