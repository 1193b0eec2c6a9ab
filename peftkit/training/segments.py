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
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.bank_file import BankEntry, BankFile, adapter_folder_name
from peftkit.artifacts.io import atomic_folder, replace_folder
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import BANK_FILE, GLOBAL
from peftkit.config import RunConfig
from peftkit.data import Splits, load_splits
from peftkit.errors import PeftkitError
from peftkit.runtime import world_size
from peftkit.tasks import TASKS

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
    from peftkit.training.loop import train

    seg = cfg.segments
    if seg is None:
        raise PeftkitError("train_bank needs cfg.segments (--segment-column)")
    out = Path(cfg.output or cfg.default_output())
    check_bank_output(out, overwrite)
    task = TASKS[cfg.task]
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    train_seg, eval_seg = segment_values(splits, seg.column, cfg.data.train)
    values = chosen_values(train_seg, seg.values, seg.column)

    with _bank_folder(out) as (tmp, barrier):
        log.info("segments: global adapter on all %d training rows", len(splits.train_texts))
        global_cfg = cfg.model_copy(update={"output": str(tmp / GLOBAL), "segments": None})
        global_run = train(global_cfg, progress=progress, splits=splits, manifest_extra={"segment": None})
        barrier()  # rank 0 has written global/ before any rank warm-starts from it
        global_logits = global_run.predictor.logits(splits.eval_texts)
        global_eval_labels = np.asarray(splits.eval_labels)
        # One base, so one pooling and one dtype for every segment adapter: the bank serves what they trained in.
        like = global_run.manifest
        adapters: dict[str, BankEntry] = {GLOBAL: BankEntry.of(global_run.manifest, GLOBAL)}
        del global_run  # frees the model before the segment runs load theirs

        evaluation: dict[str, dict[str, Any]] = {}
        jobs: list[str] = []  # segment values that get their own adapter, largest first
        for value in sorted(set(train_seg) | set(eval_seg), key=lambda v: -int((train_seg == v).sum())):
            train_mask, eval_mask = train_seg == value, eval_seg == value
            n_train, n_eval = int(train_mask.sum()), int(eval_mask.sum())
            record: dict[str, Any] = {"train_rows": n_train, "eval_rows": n_eval, "adapter": None}
            if n_eval:
                record["global"] = task.metrics(
                    global_eval_labels[eval_mask], task.decode(global_logits[eval_mask])
                )
            evaluation[value] = record
            if value not in values:
                record["skipped"] = "not in segments.values"
            elif n_train < seg.min_rows:
                record["skipped"] = f"{n_train} training rows < min_rows {seg.min_rows}"
                log.info("segment %r: %s, falls back to %s", value, record["skipped"], seg.fallback)
            else:
                jobs.append(value)

        world = world_size()
        if world > 1 and seg.parallel == "segments":
            # Each rank trains every world-th segment alone, in a child process outside the process group (its
            # own GPU on CUDA), then all ranks read what the children wrote.
            _train_in_child(cfg, jobs[_rank() :: world], tmp, progress)
            barrier()
            manifests = {v: read_manifest(tmp / adapter_folder_name(v)) for v in jobs}
        else:
            manifests = {}
            for value in jobs:
                manifests[value] = train_segment(cfg, splits, value, tmp, progress).manifest
                barrier()

        segments: dict[str, str] = {}
        for value in jobs:
            name, record, manifest = adapter_folder_name(value), evaluation[value], manifests[value]
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

        bank = BankFile.like(
            like,
            segment_column=seg.column,
            fallback=seg.fallback,
            segments=segments,
            adapters=adapters,
            segment_evaluation=evaluation,
            config=cfg.model_dump(mode="json"),
        )
        if _rank() == 0:
            bank.write(tmp)
    return BankResult(out, bank)


def train_segment(cfg: RunConfig, splits: Splits, value: str, folder: Path, progress: bool = True):
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
            "trained_by_rank": _rank(),
        },
    )


_LAUNCH_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _train_in_child(cfg: RunConfig, values: list[str], folder: Path, progress: bool) -> None:
    """Train `values`' adapters in a child process that is not part of the launch (plain single-process training).

    A process inside a torchrun/accelerate launch cannot train alone: Trainer would wrap the model in DDP and wait
    for the other ranks, which are busy with other segments. The child gets the launch variables removed and, on
    CUDA, only this rank's GPU.
    """
    import json
    import subprocess
    import sys
    import tempfile

    if not values:
        return
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _LAUNCH_VARIABLES and not k.startswith("TORCHELASTIC_")
    }
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = devices[local_rank % len(devices)]
    env["PEFTKIT_SEGMENT_RANK"] = str(_rank())  # recorded in the manifests: who trained what
    job = {
        "config": cfg.model_dump(mode="json"),
        "values": values,
        "folder": str(folder),
        "progress": progress,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        # The child's chatter (Trainer prints its metrics) joins the logs on stderr: stdout carries results only.
        done = subprocess.run(
            [sys.executable, "-m", "peftkit.training.segments", fh.name], env=env, stdout=sys.stderr
        )
    finally:
        os.unlink(fh.name)
    if done.returncode != 0:
        raise PeftkitError(
            f"rank {_rank()}: training segments {values} failed (exit {done.returncode}); see above"
        )


def _child_main(job_file: str) -> None:
    import json

    job = json.loads(Path(job_file).read_text())
    cfg = RunConfig.model_validate(job["config"])
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)  # the same seeded split as the parent's
    for value in job["values"]:
        train_segment(cfg, splits, value, Path(job["folder"]), job["progress"])


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("PEFTKIT_SEGMENT_RANK", "0")))


@contextlib.contextmanager
def _bank_folder(out: Path):
    """Yield (folder to build the bank in, barrier). One process: a temporary folder renamed onto `out` at the end.

    Under torchrun/accelerate every rank trains every adapter data-parallel, but only rank 0 writes: the ranks agree
    on one temporary path (rank 0 creates it), wait for each other after each adapter is written (a warm start reads
    the global adapter), and rank 0 renames the finished folder onto `out`.
    """
    world = world_size()
    if world == 1:
        with atomic_folder(out) as tmp:
            yield tmp, lambda: None
        return
    import torch
    from accelerate import PartialState

    # Joins the launch's process group as Trainer will (gloo on CPU, nccl on GPU). On a CPU machine accelerate needs
    # cpu=True to see the launch at all: without it every rank believes it is the only, main process.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise PeftkitError(
            f"launched with WORLD_SIZE={world} but accelerate sees {state.num_processes} processes"
        )
    tmp = out.parent / f".{out.name}.tmp-{os.environ.get('TORCHELASTIC_RUN_ID', 'dist')}"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        yield tmp, state.wait_for_everyone
        state.wait_for_everyone()
        if state.is_main_process:
            replace_folder(tmp, out)
    except BaseException:
        if state.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_bank_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise PeftkitError(f"--output {out} is a file; choose a folder path for the bank")
    if not any(out.iterdir()):
        return
    if not (out / BANK_FILE).is_file():
        raise PeftkitError(f"--output {out} exists and is not an adapter bank; choose another --output")
    if not overwrite:
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
