"""The run record: the JSON one compare run leaves in ``runs/<id>.json``, its keys spelled in this module only.

The report reads these files (`docs/compare.md` lists the fields), and finished runs are kept across compares, so the
layout is an on-disk contract: a change here is a new ``SCHEMA``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftkit.artifacts.manifest import package_versions
from peftkit.compare.measure import training_flops
from peftkit.compare.plan import RunKey
from peftkit.config import RunConfig

SCHEMA = 1


@dataclass
class Trained:
    """What one training produced, peftkit's own or a baseline's: the figures its record holds."""

    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    adapter_bytes: int
    seconds: float
    samples_per_second: float
    real_tokens: int
    padded_tokens: int
    predict_logits: Callable[[list[str]], np.ndarray]  # texts -> (N, K) logits
    steps: int | None = None  # the baselines' Trainer does not report it
    decision: Any = None  # the adapter's fitted `peftkit.tasks.Decision`; None (argmax) for the baselines


@dataclass
class TrainStart:
    """Noted as training begins: the process's peak so far (loading) and the base's matmul parameter count N."""

    load_peak_bytes: int = 0
    base_trains: bool = False
    non_embedding_params: int = 0


@dataclass
class Measured:
    """What the worker measured around one training: memory, the FLOP/s accounting, inference and segments."""

    memory_kind: str
    start: TrainStart
    train_peak_bytes: int
    flop_factor: int
    matmul_peak: dict[str, Any]
    best_peak: dict[str, Any]  # the fastest native dtype's peak: the headroom a run in another dtype leaves
    inference: dict[str, Any]
    segments: dict[str, Any] | None
    device: dict[str, Any]


def run_record(
    job: dict[str, Any],
    cfg: RunConfig,
    rows: dict[str, int],
    trained: Trained,
    measured: Measured,
    started: float,
) -> dict[str, Any]:
    """The record of one finished run (`started`: its `time.perf_counter()` at the start of the process)."""
    key = RunKey(**job["key"])
    return {
        "schema": SCHEMA,
        "key": job["key"],
        "id": key.id,
        "baseline": key.is_baseline,
        "task": cfg.task,
        "metrics": trained.metrics,
        **({} if measured.segments is None else {"segments": measured.segments}),
        "trainable_params": trained.trainable_params,
        "total_params": trained.total_params,
        "trainable_percent": 100.0 * trained.trainable_params / trained.total_params,
        "adapter_bytes": trained.adapter_bytes,
        "memory": _memory(measured),
        "train": _train(trained),
        "flops": _flops(trained, measured),
        "inference": measured.inference,
        "config": cfg.model_dump(mode="json"),
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
        "device": measured.device,
        "versions": package_versions(),
    }


def _memory(measured: Measured) -> dict[str, Any]:
    load, train = measured.start.load_peak_bytes, measured.train_peak_bytes
    return {
        "kind": measured.memory_kind,
        "peak_bytes": max(train, load),
        "train_peak_bytes": train,
        "load_peak_bytes": load,
    }


def _train(t: Trained) -> dict[str, Any]:
    return {
        "seconds": t.seconds,
        "steps": t.steps,
        "samples_per_second": t.samples_per_second,
        "real_tokens": t.real_tokens,
        "padded_tokens": t.padded_tokens,
        "real_tokens_per_second": t.real_tokens / t.seconds,
        "padded_tokens_per_second": t.padded_tokens / t.seconds,
        "padding_share": 1 - t.real_tokens / max(1, t.padded_tokens),
    }


def _flops(t: Trained, measured: Measured) -> dict[str, Any]:
    factor, n = measured.flop_factor, measured.start.non_embedding_params
    peak, best = measured.matmul_peak, measured.best_peak
    real = training_flops(n, factor, t.real_tokens, t.seconds)
    padded = training_flops(n, factor, t.padded_tokens, t.seconds)
    return {
        "formula": f"{factor} * N * tokens / train seconds",
        "factor": factor,
        "non_embedding_params": n,
        "real_per_second": real,
        "computed_per_second": padded,
        "matmul_peak_per_second": peak["flops"],
        "matmul_peak": peak,
        "real_share_of_peak": real / peak["flops"],
        "computed_share_of_peak": padded / peak["flops"],
        "best_peak": best,
        "real_share_of_best_peak": real / best["flops"],
    }
