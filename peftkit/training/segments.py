"""Segment training: a global adapter on every row, then one adapter per segment value, written as a bank.

    peftkit train --recipe reviews/minilm-l6_lora_by-platform --output banks/reviews

The rows are split once, before anything trains, so the global adapter never sees a held-out row of any segment.
Each segment adapter trains on its segment's share of the training rows (optionally starting from the global
adapter) and is evaluated on its segment's held-out rows, where the global adapter is evaluated too: the bank file
records both, so it shows what each segment adapter gained or lost over the global one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftkit.artifacts.adapter_folder import holds_output
from peftkit.artifacts.bank_file import BankEntry, BankFile, adapter_folder_name
from peftkit.artifacts.io import output_lock
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import BANK_FILE, GLOBAL
from peftkit.config import RunConfig
from peftkit.data import Splits, load_splits
from peftkit.data.splits import check_every_class_trains
from peftkit.errors import PeftkitError
from peftkit.runtime import world_size
from peftkit.tasks import TASKS
from peftkit.training.distributed import launch_rank, run_outside_launch, shared_atomic_folder

if TYPE_CHECKING:
    from peftkit.training.loop import TrainResult

log = logging.getLogger("peftkit")


@dataclass
class BankResult:
    output: Path
    bank: BankFile

    @property
    def segment_evaluation(self) -> dict[str, dict[str, Any]]:
        return self.bank.segment_evaluation


def train_bank(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True) -> BankResult:
    """Train the global and per-segment adapters `cfg.segments` asks for and write the bank folder atomically."""
    seg = cfg.segments
    if seg is None:
        raise PeftkitError("train_bank needs cfg.segments (--segment-column)")
    out = Path(cfg.output or cfg.default_output())
    check_bank_output(out, overwrite)
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    check_every_class_trains(splits)
    train_seg, eval_seg = segment_values(splits, seg.column, cfg.data.train)
    values = chosen_values(train_seg, seg.values, seg.column)

    lock = output_lock(out) if launch_rank() == 0 else contextlib.nullcontext()
    with lock, shared_atomic_folder(out) as (tmp, barrier):  # a second writer to `out` is refused
        global_run = _train_global(cfg, splits, tmp, progress)
        barrier()  # rank 0 has written global/ before any rank warm-starts from it
        evaluation, jobs = _evaluation_records(cfg, global_run, splits, train_seg, eval_seg, values)
        # One base, so one pooling and one dtype for every segment adapter: the bank serves what they trained in.
        like = global_run.manifest
        del global_run  # frees the model before the segment runs load theirs
        manifests = _train_segments(cfg, splits, jobs, tmp, progress, barrier)
        bank = _bank_file(cfg, like, evaluation, manifests)
        if launch_rank() == 0:
            bank.write(tmp)
    return BankResult(out, bank)


def _train_global(cfg: RunConfig, splits: Splits, folder: Path, progress: bool) -> TrainResult:
    """The global adapter, trained on every training row into ``folder/global``."""
    from peftkit.training.loop import train

    log.info("segments: global adapter on all %d training rows", len(splits.train_texts))
    global_cfg = cfg.model_copy(update={"output": str(folder / GLOBAL), "segments": None})
    return train(global_cfg, progress=progress, splits=splits, manifest_extra={"segment": None})


def _evaluation_records(
    cfg: RunConfig,
    global_run: TrainResult,
    splits: Splits,
    train_seg: np.ndarray,
    eval_seg: np.ndarray,
    values: set[str],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """One evaluation record per segment value (its rows, the global adapter's metrics on its held-out rows, why it
    gets no adapter of its own), and the values that get one, largest first."""
    seg, task = cfg.segments, TASKS[cfg.task]
    global_logits = global_run.predictor.logits(splits.eval_texts)
    global_eval_labels = np.asarray(splits.eval_labels)
    evaluation: dict[str, dict[str, Any]] = {}
    jobs: list[str] = []
    for value in sorted(set(train_seg) | set(eval_seg), key=lambda v: -int((train_seg == v).sum())):
        train_mask, eval_mask = train_seg == value, eval_seg == value
        n_train, n_eval = int(train_mask.sum()), int(eval_mask.sum())
        record: dict[str, Any] = {"train_rows": n_train, "eval_rows": n_eval, "adapter": None}
        if n_eval:
            record["global"] = task.metrics(
                global_eval_labels[eval_mask],
                task.decode(global_logits[eval_mask], global_run.predictor.decision),
            )
        evaluation[value] = record
        if value not in values:
            record["skipped"] = "not in segments.values"
        elif n_train < seg.min_rows:
            record["skipped"] = f"{n_train} training rows < min_rows {seg.min_rows}"
            log.info("segment %r: %s, falls back to %s", value, record["skipped"], seg.fallback)
        else:
            jobs.append(value)
    return evaluation, jobs


def _train_segments(
    cfg: RunConfig, splits: Splits, jobs: list[str], folder: Path, progress: bool, barrier: Callable[[], None]
) -> dict[str, Manifest]:
    """Train the adapters of the segment values in `jobs` into `folder`; returns their manifests."""
    world = world_size()
    if world > 1 and cfg.segments.parallel == "segments":
        # Each rank trains every world-th segment alone, in a child process outside the process group (its own GPU
        # on CUDA), then all ranks read what the children wrote.
        _train_in_child(cfg, jobs[launch_rank() :: world], folder, progress)
        barrier()
        return {v: read_manifest(folder / adapter_folder_name(v)) for v in jobs}
    manifests = {}
    for value in jobs:
        manifests[value] = train_segment(cfg, splits, value, folder, progress).manifest
        barrier()
    return manifests


def _bank_file(
    cfg: RunConfig,
    like: Manifest,
    evaluation: dict[str, dict[str, Any]],
    manifests: dict[str, Manifest],
) -> BankFile:
    """The bank file: the global adapter (`like`'s manifest) and each segment's, with the segment adapters'
    metrics added to their evaluation records, beside the global adapter's."""
    seg = cfg.segments
    adapters: dict[str, BankEntry] = {GLOBAL: BankEntry.of(like, GLOBAL)}
    segments: dict[str, str] = {}
    for value, manifest in manifests.items():
        name, record = adapter_folder_name(value), evaluation[value]
        adapters[name] = BankEntry.of(manifest, name)
        segments[value] = name
        record["adapter"] = name
        if record["eval_rows"]:
            record["own"] = manifest.metrics
            record["delta"] = {
                k: record["own"][k] - record["global"][k]
                for k in record["own"]
                if k in record["global"] and not k.startswith("majority")
            }
    return BankFile.like(
        like,
        segment_column=seg.column,
        fallback=seg.fallback,
        segments=segments,
        adapters=adapters,
        segment_evaluation=evaluation,
        config=cfg.model_dump(mode="json"),
    )


def train_segment(
    cfg: RunConfig, splits: Splits, value: str, folder: Path, progress: bool = True
) -> TrainResult:
    """Train the adapter of segment `value` on its rows of `splits`, into ``folder/<its name>``."""
    from peftkit.training.loop import train

    seg = cfg.segments
    train_seg, eval_seg = segment_values(splits, seg.column, cfg.data.train)
    train_mask, eval_mask = train_seg == value, eval_seg == value
    name = adapter_folder_name(value)
    log.info(
        "segment %r: %d train / %d eval rows -> adapter %s", value, train_mask.sum(), eval_mask.sum(), name
    )
    return train(
        cfg.model_copy(update={"output": str(folder / name), "segments": None}),
        progress=progress,
        splits=_subset(splits, train_mask, eval_mask, seg.column, value),
        init_from=folder / GLOBAL if seg.warm_start else None,
        manifest_extra={
            "segment": {"column": seg.column, "value": value},
            "warm_start_from": GLOBAL if seg.warm_start else None,
            "trained_by_rank": launch_rank(),
        },
    )


def _train_in_child(cfg: RunConfig, values: list[str], folder: Path, progress: bool) -> None:
    """Train `values`' adapters into `folder` in a child process outside the launch (`_child_main` below)."""
    if not values:
        return
    job = {
        "config": cfg.model_dump(mode="json"),
        "values": values,
        "folder": str(folder),
        "progress": progress,
    }
    code = run_outside_launch("peftkit.training.segments", job)
    if code != 0:
        raise PeftkitError(
            f"rank {launch_rank()}: training segments {values} failed (exit {code}); see above"
        )


def _child_main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    cfg = RunConfig.model_validate(job["config"])
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)  # the same seeded split as the parent's
    for value in job["values"]:
        train_segment(cfg, splits, value, Path(job["folder"]), job["progress"])


def check_bank_output(out: Path, overwrite: bool) -> None:
    """Refuse to replace a bank (or any non-bank content) unless told to."""
    if holds_output(out, BANK_FILE, "an adapter bank", " for the bank") and not overwrite:
        raise PeftkitError(f"--output {out} already holds a bank; pass --overwrite to replace it")


def segment_values(splits: Splits, column: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    for side, frame in (("training", splits.train_frame), ("held-out", splits.eval_frame)):
        if column not in frame.columns:
            have = ", ".join(map(str, frame.columns[:12]))
            raise PeftkitError(
                f"--segment-column {column!r}: no such column in the {side} rows of {source} (columns: {have})"
            )
        missing = frame[column].isna()
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise PeftkitError(
                f"--segment-column {column!r}: {int(missing.sum())} {side} rows of {source} have no value "
                f"(first: kept row {row + 1}); fill them in (e.g. 'unknown') or drop them"
            )
    return (
        splits.train_frame[column].astype(str).to_numpy(),
        splits.eval_frame[column].astype(str).to_numpy(),
    )


def chosen_values(train_seg: np.ndarray, wanted: list[str] | None, column: str) -> set[str]:
    present = set(train_seg)
    if wanted is None:
        return present
    absent = [v for v in wanted if v not in present]
    if absent:
        raise PeftkitError(
            f"segments.values {absent} do not occur in column {column!r} (values: {', '.join(sorted(present)[:10])})"
        )
    return set(wanted)


def _subset(splits: Splits, train_mask: np.ndarray, eval_mask: np.ndarray, column: str, value: str) -> Splits:
    """The rows of one segment, with the stats the manifest reports recomputed for them."""
    train_idx, eval_idx = np.flatnonzero(train_mask), np.flatnonzero(eval_mask)
    stats = {
        k: v
        for k, v in splits.stats.items()
        if k not in ("label_counts", "label_summary", "train_rows", "eval_rows")
    }
    stats.update(
        segment={"column": column, "value": value}, train_rows=len(train_idx), eval_rows=len(eval_idx)
    )
    if splits.labels is not None:
        stats["label_counts"] = {
            side: {
                splits.labels[k]: int(c)
                for k, c in zip(*np.unique([labels[i] for i in idx], return_counts=True))
            }
            for side, labels, idx in (
                ("train", splits.train_labels, train_idx),
                ("eval", splits.eval_labels, eval_idx),
            )
        }
    return dataclasses.replace(
        splits,
        train_texts=[splits.train_texts[i] for i in train_idx],
        train_labels=[splits.train_labels[i] for i in train_idx],
        eval_texts=[splits.eval_texts[i] for i in eval_idx],
        eval_labels=[splits.eval_labels[i] for i in eval_idx],
        train_frame=splits.train_frame.iloc[train_idx].reset_index(drop=True),
        eval_frame=splits.eval_frame.iloc[eval_idx].reset_index(drop=True),
        stats=stats,
    )


if __name__ == "__main__":  # the child process of `_train_in_child`
    import sys

    from peftkit.runtime import quiet_libraries

    quiet_libraries()  # importing the CLI helpers also gives the peftkit logger its stderr handler
    _child_main(sys.argv[1])
