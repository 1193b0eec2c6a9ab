"""The one training path, for every method: data -> base model -> method -> HF Trainer -> adapter folder.

    cfg = peftkit.config.load_config("recipes/reviews/minilm-l6_lora.yaml")
    result = peftkit.training.loop.train(cfg)

transformers' Trainer does the loop (accumulation, mixed precision, checkpoints, resume, logging, distributed);
peftkit adds its task losses, method hooks (AdaLoRA's rank allocation, as callbacks) and a NaN guard.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit import models
from peftkit.artifacts.adapter_folder import check_output, write_adapter_folder
from peftkit.artifacts.io import check_writable_path, output_lock, write_failure
from peftkit.artifacts.manifest import FORMAT_VERSION, Manifest, package_versions
from peftkit.config import RunConfig
from peftkit.data import Splits, load_splits
from peftkit.data.splits import check_every_class_trains
from peftkit.errors import NonFiniteLossError, PeftkitError
from peftkit.inference.predictor import Predictor
from peftkit.lock import drift as lock_drift
from peftkit.methods import METHODS
from peftkit.runtime import rank
from peftkit.selection import KeepBest, held_out_evaluator
from peftkit.tasks import TASKS
from peftkit.training.hf_trainer import PeftkitTrainer, encode, make_trainer, training_arguments
from peftkit.training.model_setup import ModelSetup, head_parameters, needs_autocast, setup_model
from peftkit.training.plan import checkpoint_dir, checkpoints, damage, last_checkpoint

log = logging.getLogger("peftkit")


@dataclass
class TrainResult:
    output: Path
    manifest: Manifest
    predictor: Predictor

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.metrics


def train(
    cfg: RunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
    splits: Splits | None = None,
    init_from: Path | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train one adapter as `cfg` says and write its folder; returns the folder, manifest and a ready predictor.

    Args:
        cfg: the resolved run config (`peftkit.config.load_config`).
        overwrite: replace a different adapter already in the output folder.
        resume: continue from the last checkpoint of an interrupted run with the same output folder.
        progress: show Trainer's progress bar (stderr).
        callbacks: extra `transformers.TrainerCallback`s, e.g. for custom logging or early stopping.
        splits: rows already split (segment training passes each segment's share); default: read from ``cfg.data``.
        init_from: an adapter folder of the same method to start from (warm start) instead of a fresh adapter.
        manifest_extra: more keys for the manifest (the segment an adapter is for).
    """
    if cfg.segments is not None:
        raise PeftkitError(
            "this config trains an adapter bank (segments:); use peftkit.training.segments.train_bank"
        )
    out = Path(cfg.output or cfg.default_output())
    check_writable_path(out, folder=True)
    with _writer_lock(out):
        return _train(cfg, out, overwrite, resume, progress, callbacks, splits, init_from, manifest_extra)


def _writer_lock(out: Path):
    """The --output lock (`output_lock`), taken by the process that writes: rank 0 of a launch."""
    return output_lock(out) if rank() == 0 else contextlib.nullcontext(out)


def _train(
    cfg: RunConfig,
    out: Path,
    overwrite: bool,
    resume: bool,
    progress: bool,
    callbacks: list | None,
    splits: Splits | None,
    init_from: Path | None,
    manifest_extra: dict[str, Any] | None,
) -> TrainResult:
    ckpt, resume_from = _output_folders(cfg, out, overwrite, resume)
    if splits is None:
        splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
        check_every_class_trains(splits)
    _log_data(cfg, splits)
    setup = setup_model(cfg, splits, init_from)
    predictor = Predictor(
        setup.model,
        setup.tokenizer,
        task=cfg.task,
        labels=splits.labels,
        max_length=cfg.data.max_length,
        adapter=out.name,
        batch_size=cfg.train.eval_batch_size,
    )
    keep_best = _keep_best(cfg, setup, predictor, splits)
    fit = _fit(cfg, setup, splits, ckpt, resume_from, progress, keep_best, list(callbacks or []))
    metrics = _evaluate(cfg, predictor, splits)
    speed = _speed_summary(fit, setup, keep_best)
    predictor.manifest = manifest = _manifest(cfg, setup, splits, metrics, speed, manifest_extra or {})
    _save(fit, cfg, setup, out, manifest, ckpt)
    return TrainResult(out, manifest, predictor)


def _output_folders(cfg: RunConfig, out: Path, overwrite: bool, resume: bool) -> tuple[Path, Path | None]:
    """Check the adapter folder `out` free to write; its checkpoint folder and the checkpoint to resume from."""
    check_output(out, cfg.model_dump(mode="json"), overwrite=overwrite)
    ckpt = checkpoint_dir(out)
    resume_from = last_checkpoint(ckpt) if resume else None
    if resume and resume_from is None:
        raise PeftkitError(
            f"--resume: no complete checkpoint in {ckpt} to continue from; run without --resume"
        )
    return ckpt, resume_from


def _log_data(cfg: RunConfig, splits: Splits) -> None:
    labels_note = f", labels {', '.join(splits.labels)}" if splits.labels else ""
    log.info(
        "data: %d train / %d eval rows from %s%s",
        len(splits.train_texts),
        len(splits.eval_texts),
        cfg.data.train,
        labels_note,
    )


def _keep_best(cfg: RunConfig, setup: ModelSetup, predictor: Predictor, splits: Splits) -> KeepBest | None:
    """The callback that keeps the best weights on the held-out rows (train.select_best); None without them."""
    if not (cfg.train.select_best and splits.eval_texts):
        return None
    return KeepBest(
        setup.model,
        held_out_evaluator(predictor, TASKS[cfg.task], splits.eval_texts, splits.eval_labels),
        cfg.task,
        settled_step=METHODS[cfg.method.name].settled_step(cfg.method, setup.ctx),
    )


@dataclass
class _Fit:
    """What Trainer's run left: the trainer (its state and token counts), its train metrics and the wall time."""

    trainer: PeftkitTrainer
    metrics: dict[str, float]
    seconds: float


def _fit(
    cfg: RunConfig,
    setup: ModelSetup,
    splits: Splits,
    ckpt: Path,
    resume_from: Path | None,
    progress: bool,
    keep_best: KeepBest | None,
    callbacks: list,
) -> _Fit:
    """Train `setup.model` with Trainer, checkpointing into `ckpt`; a non-finite loss stops the run, its last good
    weights saved."""
    spec = METHODS[cfg.method.name]
    ckpt.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(
        setup.model,
        training_arguments(cfg, setup.plan, ckpt, setup.device, progress, autocast=needs_autocast(setup)),
        encode(setup.tokenizer, splits.train_texts, splits.train_labels, cfg),
        setup.tokenizer,
        TASKS[cfg.task],
        spec,
        # KeepBest first: the best weights are back before a method's own end-of-training step (AdaLoRA's cut).
        [keep_best] * (keep_best is not None)
        + spec.callbacks(setup.model, cfg.method, setup.ctx)
        + callbacks,
        head_params=head_parameters(setup.model, setup.heads),
        head_lr=setup.plan.head_lr,
        keep_best=keep_best,
    )
    started = time.perf_counter()
    try:
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except OSError as exc:  # a checkpoint write failed: a full disk, a read-only or vanished folder
        failure = write_failure(exc, ckpt)
        if failure is None:
            raise
        _remove_incomplete_checkpoints(ckpt)
        raise PeftkitError(
            f"{failure}; free space, then --resume continues from the last complete checkpoint"
        ) from None
    except NonFiniteLossError as exc:
        keep = ckpt / "last-good"
        # The failing step raised before backward, so the weights being saved are still finite.
        spec.save(trainer.model, keep)
        raise NonFiniteLossError(
            f"{exc}; the last good weights are in {keep}; lower --lr or check the labels"
        ) from None
    return _Fit(trainer, out.metrics, time.perf_counter() - started)


def _evaluate(cfg: RunConfig, predictor: Predictor, splits: Splits) -> dict[str, float]:
    """The task's metrics on the held-out rows; empty when there are none (a small segment can have none)."""
    import numpy as np

    log.info("evaluating on %d held-out rows", len(splits.eval_texts))
    if not splits.eval_texts:
        return {}
    task = TASKS[cfg.task]
    return task.metrics(np.asarray(splits.eval_labels), task.decode(predictor.logits(splits.eval_texts)))


def _speed_summary(fit: _Fit, setup: ModelSetup, keep_best: KeepBest | None) -> dict[str, Any]:
    """The manifest's ``train`` section: steps, time, throughput, final loss, the plan and the selection."""
    counts, seconds = fit.trainer.token_counts, fit.seconds
    return {
        "steps": fit.trainer.state.global_step,
        "seconds": seconds,
        "device": setup.device,
        "world_size": setup.world_size,
        "samples_per_second": fit.metrics.get("train_samples_per_second", 0.0),
        # Counted over the batches this process trained on (this session's, after a resume).
        **counts,
        "real_tokens_per_second": counts["real_tokens"] / seconds,
        "padded_tokens_per_second": counts["padded_tokens"] / seconds,
        "final_loss": _last_loss(fit.trainer.state.log_history),
        "plan": setup.plan.to_json(),
        "selection": keep_best.summary() if keep_best is not None else None,
    }


def _save(fit: _Fit, cfg: RunConfig, setup: ModelSetup, out: Path, manifest: Manifest, ckpt: Path) -> None:
    """Rank 0 writes the adapter folder atomically, then removes the run's checkpoints."""
    if fit.trainer.is_world_process_zero():
        save = METHODS[cfg.method.name].save
        write_adapter_folder(lambda tmp: save(setup.model, tmp), out, manifest, fit.trainer.state.log_history)
        _remove_tree(ckpt)


def _manifest(
    cfg: RunConfig, setup: ModelSetup, splits, metrics: dict, speed: dict, extra: dict[str, Any]
) -> Manifest:
    spec, task = METHODS[cfg.method.name], TASKS[cfg.task]
    fields = {
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "pooling": setup.pooling,  # resolved from model.pooling; reloads pool the same way
        "head_init": setup.head_init,  # resolved from model.head_init; only training reads it
        "dtype": setup.dtype,  # resolved from model.dtype; reloads compute in it whatever the machine's auto would pick
        "peft_native": spec.peft_native,
        "task": cfg.task,
        "labels": splits.labels,
        "num_outputs": task.num_outputs(splits.labels),
        "base": {
            # An alias resolves anywhere the package is installed; a path is stored absolute so that
            # peftkit.load finds the base from any working directory.
            "name": cfg.model.name if cfg.model.name in models.ALIASES else str(setup.base.source),
            "sha256": setup.base.sha256,
            "model_type": setup.ctx.model_type,
            "architecture": (setup.base.config.get("architectures") or ["?"])[0],
        },
        "quant": cfg.model.quant,
        "head_names": list(setup.heads),
        "trainable_params": setup.trainable_params,
        "total_params": setup.total_params,
        "trainable_percent": 100.0 * setup.trainable_params / setup.total_params,
        "metrics": metrics,
        "data": {
            "train_source": cfg.data.train,
            "eval_source": cfg.data.eval or f"{cfg.data.eval_fraction:.0%} split",
            "train_rows": len(splits.train_texts),
            "eval_rows": len(splits.eval_texts),
            "synthetic": _is_synthetic(splits.train_frame),
            **_jsonable(splits.stats),
        },
        "train": speed,
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
        "versions_vs_lock": lock_drift().to_json(),  # which installed versions differ from the tested lock
    }
    return Manifest.model_validate(fields | extra)


def _last_loss(history: list[dict]) -> float | None:
    losses = [e["loss"] for e in history if "loss" in e]
    return losses[-1] if losses else None


def _is_synthetic(frame) -> bool:
    """Rows made by `peftkit data synth` carry ``synthetic=True``; the manifest and model card must say so."""
    return "synthetic" in frame.columns and bool(frame["synthetic"].astype(str).str.lower().eq("true").all())


def _jsonable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, list, dict, type(None)))}


def _remove_incomplete_checkpoints(ckpt: Path) -> None:
    """A checkpoint cut short by a failed write would only be skipped by --resume: remove it, freeing its space."""
    for checkpoint in checkpoints(ckpt):
        if damage(checkpoint) is not None:
            _remove_tree(checkpoint)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
