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
from peftkit.artifacts.names import RELIABILITY_PLOT
from peftkit.config import RunConfig
from peftkit.data import Splits, load_splits
from peftkit.data.profile import training_profile, write_profile
from peftkit.data.splits import check_every_class_trains
from peftkit.errors import NonFiniteLossError, PeftkitError
from peftkit.inference.predictor import Predictor
from peftkit.lock import drift as lock_drift
from peftkit.methods import METHODS
from peftkit.runtime import rank
from peftkit.selection import KeepBest, held_out_evaluator
from peftkit.tasks import IDENTITY, TASKS
from peftkit.tasks.calibration import reliability_png
from peftkit.tasks.decide import class_weights as class_weights_of
from peftkit.tasks.decide import fit_decision, positive_index
from peftkit.tasks.threshold import Objective
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
    weights = class_weights(cfg, splits)
    predictor = Predictor(
        setup.model,
        setup.tokenizer,
        task=cfg.task,
        labels=splits.labels,
        max_length=cfg.data.max_length,
        adapter=out.name,
        batch_size=cfg.train.eval_batch_size,
    )
    keep_best = _keep_best(cfg, setup, predictor, splits, weights)
    fit = _fit(cfg, setup, splits, ckpt, resume_from, progress, keep_best, list(callbacks or []), weights)
    held_out = _evaluate(cfg, predictor, splits, weights)
    speed = _speed_summary(fit, setup, keep_best)
    if weights is not None:
        speed["class_weights"] = dict(zip(splits.labels, (round(float(w), 4) for w in weights)))
    extra = {**held_out.sections, **(manifest_extra or {})}
    predictor.manifest = manifest = _manifest(cfg, setup, splits, held_out.metrics, speed, extra)
    _save(fit, cfg, setup, out, manifest, ckpt, held_out, splits)
    return TrainResult(out, manifest, predictor)


def class_weights(cfg: RunConfig, splits: Splits):
    """The loss's class weights for these training rows (`peftkit.tasks.decide.class_weights`), or None."""
    task = TASKS[cfg.task]
    if not task.labelled:
        return class_weights_of(cfg.train.class_weights, task, [], 0)
    weights = class_weights_of(cfg.train.class_weights, task, splits.train_labels, len(splits.labels))
    if weights is not None:
        log.info(
            "class weights (train.class_weights=%s): %s",
            cfg.train.class_weights,
            ", ".join(f"{label} {w:.2f}" for label, w in zip(splits.labels, weights)),
        )
    return weights


def _decider(cfg: RunConfig, splits: Splits, weights, *, calibrate: bool):
    """(held-out logits, labels) -> (`Decision`, calibration section, threshold section), as ``decision:`` says."""
    task = TASKS[cfg.task]
    if not task.calibrates:
        return lambda logits, y: (IDENTITY, None, None)
    objective = Objective.parse(cfg.decision.threshold)
    positive = (
        positive_index(splits.labels, splits.train_labels, cfg.decision.positive)
        if len(splits.labels) == 2
        else 1
    )

    def decide(logits, y):
        return fit_decision(
            task,
            logits,
            y,
            labels=splits.labels,
            calibrate=calibrate and cfg.decision.calibrate,
            objective=objective,
            positive=positive,
            weights=weights,
        )

    return decide


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


def _keep_best(
    cfg: RunConfig, setup: ModelSetup, predictor: Predictor, splits: Splits, weights
) -> KeepBest | None:
    """The callback that keeps the best weights on the held-out rows (train.select_best); None without them."""
    if not (cfg.train.select_best and splits.eval_texts):
        return None
    task, by = TASKS[cfg.task], cfg.train.select_metric
    if by != "auto" and by not in task.metric_names(len(splits.labels or [])):
        raise PeftkitError(
            f"train.select_metric={by}: a {cfg.task} task with these labels does not report it; use auto or one "
            f"of {', '.join(task.metric_names(len(splits.labels or [])))}"
        )
    # The threshold only: a temperature moves no label, so it is fitted once, after training.
    decide = _decider(cfg, splits, weights, calibrate=False)
    return KeepBest(
        setup.model,
        held_out_evaluator(
            predictor, task, splits.eval_texts, splits.eval_labels, lambda logits, y: decide(logits, y)[0]
        ),
        cfg.task,
        settled_step=METHODS[cfg.method.name].settled_step(cfg.method, setup.ctx),
        by=None if by == "auto" else by,
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
    weights=None,
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
        class_weights=weights,
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


@dataclass
class _HeldOut:
    """The adapter on its held-out rows: metrics with its fitted decision, the manifest sections that describe the
    decision, and the probabilities before/after calibration for the reliability diagram."""

    metrics: dict[str, float]
    sections: dict[str, Any]
    labels: Any = None
    curves: dict[str, Any] | None = None
    positive: int | None = None  # two labels: the positive label's index
    decoded: Any = None  # the held-out rows decoded with the fitted decision, for profile.json


def _evaluate(cfg: RunConfig, predictor: Predictor, splits: Splits, weights) -> _HeldOut:
    """Fit the decision (temperature, threshold) on the held-out rows and score the adapter with it; empty when there
    are no held-out rows (a small segment can have none)."""
    import numpy as np

    log.info("evaluating on %d held-out rows", len(splits.eval_texts))
    if not splits.eval_texts:
        return _HeldOut({}, {})
    task, y = TASKS[cfg.task], np.asarray(splits.eval_labels)
    logits = predictor.logits(splits.eval_texts)
    decision, calibration, threshold = _decider(cfg, splits, weights, calibrate=True)(logits, y)
    decoded = task.decode(logits, decision)
    sections = {k: v for k, v in (("calibration", calibration), ("threshold", threshold)) if v is not None}
    _log_decision(calibration, threshold)
    curves = None
    if calibration is not None:
        curves = {"uncalibrated": task.class_probs(logits), "calibrated": decoded.probs}
    positive = threshold.get("positive_index") if threshold else None
    return _HeldOut(task.metrics(y, decoded), sections, y, curves, positive, decoded)


def _log_decision(calibration: dict | None, threshold: dict | None) -> None:
    if calibration is not None:
        log.info(
            "calibration: temperature %.3f%s; held-out ECE %.3f -> %.3f, Brier %.3f -> %.3f",
            calibration["temperature"],
            f" (not fitted: {calibration['skipped']})" if "skipped" in calibration else "",
            calibration["ece_before"],
            calibration["ece_after"],
            calibration["brier_before"],
            calibration["brier_after"],
        )
    if threshold is not None and "value" in threshold:
        rates = threshold["held_out"]
        log.info(
            "decision threshold (%s) for %r: %.3f; held-out precision %.3f, recall %.3f, %.1f%% of rows positive",
            threshold["objective"],
            threshold["positive"],
            threshold["value"],
            rates["precision"],
            rates["recall"],
            100 * rates["positive_share"],
        )
    elif threshold is not None:
        log.info("no decision threshold (%s): labels by argmax", threshold["skipped"])


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


def _save(
    fit: _Fit,
    cfg: RunConfig,
    setup: ModelSetup,
    out: Path,
    manifest: Manifest,
    ckpt: Path,
    held_out: _HeldOut,
    splits: Splits,
) -> None:
    """Rank 0 writes the adapter folder atomically (with its reliability diagram and the profile of its data and
    held-out scores that `peftkit drift` compares new rows with), then removes the checkpoints."""
    if fit.trainer.is_world_process_zero():
        save = METHODS[cfg.method.name].save
        labelled = held_out.decoded is not None and held_out.decoded.index is not None
        profile = training_profile(
            cfg.data.model_dump(mode="json"), splits.train_frame, labels=splits.labels, decoded=held_out.decoded,
            positive=held_out.positive, true=held_out.labels if labelled else None, tokenizer=setup.tokenizer,
        )  # fmt: skip

        def write(tmp: Path) -> None:
            save(setup.model, tmp)
            write_profile(tmp, profile)
            if held_out.curves is not None:
                reliability_png(
                    held_out.labels,
                    held_out.curves,
                    tmp / RELIABILITY_PLOT,
                    f"{out.name}: held-out rows",
                    positive=held_out.positive,
                )

        write_adapter_folder(write, out, manifest, fit.trainer.state.log_history)
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
