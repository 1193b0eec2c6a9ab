"""One compare run, in a process of its own: ``python -m peftkit.compare.worker JOB.json``.

A fresh process per run is what makes the memory figure honest (a process's peak RSS never goes down, and a
previous run's caches would count against the next) and what makes a compare resumable (a run either wrote its
result file or did not). The result is written to a temporary name and renamed, so a killed run leaves nothing.

The steps: set up (config, device, the recipe's split), train (peftkit's path or a baseline), measure (the matmul
peak, FLOP/s, inference, segments), record (`peftkit.compare.record`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
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
)
from peftkit.compare.plan import RunKey
from peftkit.compare.record import Measured, Trained, TrainStart, run_record
from peftkit.config import RunConfig


@dataclass
class Setup:
    """One run's inputs: what it is, its config, where it trains and the rows it reads."""

    key: RunKey
    cfg: RunConfig
    device: str
    memory: PeakMemory
    splits: Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one run; returns the record the report reads (`docs/compare.md` lists its fields)."""
    started = time.perf_counter()
    setup = set_up(job)
    start = TrainStart()
    callbacks = [train_start_callback(setup, start)]
    train = train_baseline if setup.key.is_baseline else train_peftkit
    cfg, trained = train(setup, callbacks)
    train_peak = setup.memory.peak()
    measured = measure(setup, cfg, trained, start, train_peak, job.get("segment_column"))
    rows = {"train": len(setup.splits.train_texts), "eval": len(setup.splits.eval_texts)}
    return run_record(job, cfg, rows, trained, measured, started)


def set_up(job: dict[str, Any]) -> Setup:
    """The run's key, config, device and rows, from the job file the runner wrote."""
    from peftkit import models
    from peftkit.data import load_splits

    key = RunKey(**job["key"])
    cfg = RunConfig.model_validate(job["config"])
    device = models.default_device()
    memory = PeakMemory(device)
    # The split is the recipe's, whatever this run's seed: every run reads the same rows.
    splits = load_splits(cfg.data, cfg.task, job["split_seed"])
    return Setup(key, cfg, device, memory, splits)


def train_start_callback(setup: Setup, start: TrainStart):
    """A Trainer callback that fills `start` as training begins and starts the training-phase memory peak."""
    from transformers import TrainerCallback

    from peftkit.methods import METHODS

    method, memory = setup.key.method, setup.memory

    class Measure(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            start.load_peak_bytes = memory.peak()
            start.base_trains = method == "tutorial" or (method in METHODS and METHODS[method].full_model)
            start.non_embedding_params = (
                non_embedding_params(model) if start.base_trains else frozen_matmul_params(model)
            )
            memory.reset()

    return Measure()


def train_peftkit(setup: Setup, callbacks: list) -> tuple[RunConfig, Trained]:
    """Train through peftkit's own path into a folder that is thrown away; returns the config it ran with."""
    from peftkit.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = setup.cfg.model_copy(update={"output": str(Path(tmp) / setup.key.id)})
        result = train(cfg, splits=setup.splits, progress=False, callbacks=callbacks)
    m = result.manifest
    return cfg, Trained(
        metrics=m.metrics,
        trainable_params=m.trainable_params,
        total_params=m.total_params,
        adapter_bytes=m.adapter_bytes,
        seconds=m.train.seconds,
        samples_per_second=m.train.samples_per_second,
        real_tokens=m.train.real_tokens,
        padded_tokens=m.train.padded_tokens,
        predict_logits=result.predictor.logits,
        steps=m.train.steps,
        decision=result.predictor.decision,
    )


def train_baseline(setup: Setup, callbacks: list) -> tuple[RunConfig, Trained]:
    """Train one of the hand-written baseline rows."""
    from peftkit.compare.baselines import run_baseline

    return setup.cfg, run_baseline(setup.key.method, setup.cfg, setup.splits, callbacks)


def measure(
    setup: Setup,
    cfg: RunConfig,
    trained: Trained,
    start: TrainStart,
    train_peak: int,
    segment_column: str | None,
) -> Measured:
    """The figures taken after training: the device's matmul peaks, the FLOP factor, segments and inference."""
    from peftkit import models

    device = setup.device
    # After training, not before: its tensors (384 MiB on GPU) would otherwise count in the run's memory peak.
    peak = matmul_peak(device, models.torch_dtype(cfg.model.dtype, device, cfg.model.quant, cfg.method.name))
    factor = flop_factor(
        base_trains=start.base_trains,
        gradient_checkpointing=cfg.train.gradient_checkpointing
        and not setup.key.is_baseline,  # baselines never use it
    )
    return Measured(
        memory_kind=setup.memory.kind,
        start=start,
        train_peak_bytes=train_peak,
        flop_factor=factor,
        matmul_peak=peak,
        best_peak=best_matmul_peak(device, peak),
        segments=segment_scores(
            cfg.task, segment_column, setup.splits, trained.predict_logits, trained.decision
        ),
        inference=inference_speed(trained.predict_logits, setup.splits.eval_texts),
        device=device_info(device),
    )


def segment_scores(
    task_name: str, column: str | None, splits, logits_fn, decision=None
) -> dict[str, Any] | None:
    """Per-segment metrics on the held-out rows, when the compare names a segment column, decoded with the adapter's
    `decision` (argmax when None)."""
    if not column:
        return None
    from peftkit.tasks import IDENTITY, TASKS

    if column not in splits.eval_frame.columns:
        raise SystemExit(f"--segment-column {column}: the held-out rows have no such column")
    task = TASKS[task_name]
    values = splits.eval_frame[column].astype(str).to_numpy()
    decoded_all = logits_fn(splits.eval_texts)
    y = np.asarray(splits.eval_labels)
    per = {}
    for value in sorted(set(values)):
        rows = values == value
        per[value] = {
            "rows": int(rows.sum()),
            **task.metrics(y[rows], task.decode(decoded_all[rows], decision or IDENTITY)),
        }
    return per


def device_info(device: str) -> dict[str, Any]:
    """The device, CPU and thread count the run was measured on."""
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
    from peftkit.artifacts.io import write_json
    from peftkit.runtime import quiet_libraries

    quiet_libraries()
    job = json.loads(Path(argv[0]).read_text())
    write_json(Path(job["out"]), run(job))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
