"""The one training path, for every method: data -> base model -> method -> HF Trainer -> adapter folder.

    cfg = peftkit.config.load_config("recipes/reviews/minilm-l6_lora.yaml")
    result = peftkit.training.loop.train(cfg)

transformers' Trainer does the loop (accumulation, mixed precision, checkpoints, resume, logging, distributed);
peftkit adds its task losses, method hooks (AdaLoRA's rank allocation, as callbacks) and a NaN guard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit import heads as head_inits
from peftkit import models
from peftkit import pooling as poolings
from peftkit.artifacts.adapter_folder import check_output, write_adapter_folder
from peftkit.artifacts.manifest import FORMAT_VERSION, Manifest, package_versions
from peftkit.config import RunConfig
from peftkit.data import Splits, load_splits
from peftkit.errors import NonFiniteLossError, PeftkitError
from peftkit.inference.predictor import Predictor
from peftkit.lock import drift as lock_drift
from peftkit.methods import METHODS, MethodContext
from peftkit.runtime import world_size
from peftkit.selection import KeepBest, held_out_evaluator
from peftkit.tasks import TASKS
from peftkit.training.hf_trainer import encode, make_trainer, training_arguments
from peftkit.training.plan import Plan, checkpoint_dir, last_checkpoint, make_plan

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
    check_output(out, cfg.model_dump(mode="json"), overwrite=overwrite)
    ckpt = checkpoint_dir(out)
    last_ckpt = last_checkpoint(ckpt) if resume else None
    if resume and last_ckpt is None:
        raise PeftkitError(f"--resume: no checkpoint in {ckpt} to continue from; run without --resume")

    spec, task = METHODS[cfg.method.name], TASKS[cfg.task]
    splits = splits or load_splits(cfg.data, cfg.task, cfg.train.seed)
    labels_note = f", labels {', '.join(splits.labels)}" if splits.labels else ""
    log.info(
        "data: %d train / %d eval rows from %s%s",
        len(splits.train_texts),
        len(splits.eval_texts),
        cfg.data.train,
        labels_note,
    )
    run = _setup_model(cfg, splits, init_from)

    predictor = Predictor(
        run.model,
        run.tokenizer,
        task=cfg.task,
        labels=splits.labels,
        max_length=cfg.data.max_length,
        adapter=out.name,
        batch_size=cfg.train.eval_batch_size,
    )
    keep_best = (
        KeepBest(
            run.model,
            held_out_evaluator(predictor, task, splits.eval_texts, splits.eval_labels),
            cfg.task,
            settled_step=spec.settled_step(cfg.method, run.ctx),
        )
        if cfg.train.select_best and splits.eval_texts
        else None
    )
    ckpt.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(
        run.model,
        training_arguments(cfg, run.plan, ckpt, run.device, progress, autocast=_needs_autocast(run)),
        encode(run.tokenizer, splits.train_texts, splits.train_labels, cfg),
        run.tokenizer,
        task,
        spec,
        # KeepBest first: the best weights are back before a method's own end-of-training step (AdaLoRA's cut).
        [keep_best] * (keep_best is not None)
        + spec.callbacks(run.model, cfg.method, run.ctx)
        + list(callbacks or []),
        head_params=head_parameters(run.model, run.heads),
        head_lr=run.plan.head_lr,
    )
    started = time.perf_counter()
    try:
        train_out = trainer.train(resume_from_checkpoint=str(last_ckpt) if last_ckpt else None)
    except NonFiniteLossError as exc:
        keep = ckpt / "last-good"
        # The failing step raised before backward, so the weights being saved are still finite.
        spec.save(trainer.model, keep)
        raise NonFiniteLossError(
            f"{exc}; the last good weights are in {keep}; lower --lr or check the labels"
        ) from None
    seconds = time.perf_counter() - started

    log.info("evaluating on %d held-out rows", len(splits.eval_texts))
    import numpy as np

    metrics = (
        task.metrics(np.asarray(splits.eval_labels), task.decode(predictor.logits(splits.eval_texts)))
        if splits.eval_texts
        else {}  # a small segment can have no held-out rows
    )
    history = trainer.state.log_history
    speed = {
        "steps": trainer.state.global_step,
        "seconds": seconds,
        "device": run.device,
        "world_size": run.world_size,
        "samples_per_second": train_out.metrics.get("train_samples_per_second", 0.0),
        # Counted over the batches this process trained on (this session's, after a resume).
        **trainer.token_counts,
        "real_tokens_per_second": trainer.token_counts["real_tokens"] / seconds,
        "padded_tokens_per_second": trainer.token_counts["padded_tokens"] / seconds,
        "final_loss": _last_loss(history),
        "plan": run.plan.to_json(),
        "selection": keep_best.summary() if keep_best is not None else None,
    }
    predictor.manifest = manifest = _manifest(cfg, run, splits, metrics, speed, manifest_extra or {})
    if trainer.is_world_process_zero():
        write_adapter_folder(lambda tmp: spec.save(run.model, tmp), out, manifest, history)
        _remove_tree(ckpt)
    return TrainResult(out, manifest, predictor)


@dataclass
class _Run:
    """What setting up the model produced: the base's identity and the model ready to train."""

    base: models.BaseRef
    tokenizer: Any
    model: Any
    heads: tuple[str, ...]
    ctx: MethodContext
    world_size: int
    device: str
    total_params: int
    trainable_params: int
    pooling: str
    dtype: str  # resolved from model.dtype: what the frozen base is stored and computes in
    plan: Plan  # epochs, steps and learning rates (peftkit.training.plan)
    head_init: str  # resolved from model.head_init (peftkit.heads)


def _setup_model(cfg: RunConfig, splits, init_from: Path | None = None) -> _Run:
    """Resolve and load the base with a fresh head, then apply the method (only adapter + head trainable), starting
    from the adapter in `init_from` when given."""
    from transformers import set_seed

    from peftkit import dropout

    spec, task = METHODS[cfg.method.name], TASKS[cfg.task]
    base = models.resolve(cfg.model.name)
    tokenizer = models.load_tokenizer(base)
    device = models.default_device()
    dtype, why = models.resolve_dtype(cfg.model.dtype, device, cfg.model.quant, cfg.method.name)
    log.info("base: %s (%s; %s)", cfg.model.name, "8-bit" if cfg.model.quant == "8bit" else dtype, why)
    set_seed(cfg.train.seed)  # the fresh head's initial weights depend on it
    pooling = poolings.resolve(base.folder, base.config, cfg.model.pooling)
    log.info("pooling: %s%s", pooling, " (model.pooling=auto)" if cfg.model.pooling == "auto" else "")
    model, heads = models.load_base(
        base,
        task.num_outputs(splits.labels),
        quant=cfg.model.quant,
        dtype=dtype,
        device=device,
        pad_token_id=tokenizer.pad_token_id,
        pooling=pooling,
    )
    head_init = head_inits.resolve(cfg.model.head_init, model, decoder=pooling == "last", task=cfg.task)
    head_inits.initialise(
        model,
        heads,
        head_init,
        labels=splits.labels,
        train_labels=splits.train_labels,
        tokenizer=tokenizer,
        task=cfg.task,
    )
    total = sum(p.numel() for p in model.parameters())
    if cfg.train.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input-embedding grads, so it also works on a frozen 8-bit base.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    world = world_size()
    plan = make_plan(len(splits.train_texts), cfg, world, head_init)
    ctx = MethodContext(model.config.model_type, heads, plan.steps, cfg.model.quant == "8bit")
    model = spec.apply(model, cfg.method, ctx)
    dropout.install(model)  # same masks' distribution, under half the CPU time (peftkit.dropout)
    if head_init == "cumulative":
        head_inits.tie_rows(model, heads, task.num_outputs(splits.labels))
    if init_from is not None:
        log.info("warm start from %s", init_from)
        spec.warm_start(model, Path(init_from))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "method: %s, %s trainable params (%.3f%% of %s)",
        spec.name,
        f"{trainable:,}",
        100 * trainable / total,
        f"{total:,}",
    )
    log.info("plan: %s", plan.describe())
    return _Run(
        base, tokenizer, model, heads, ctx, world, device, total, trainable, pooling, dtype, plan, head_init
    )


def _manifest(
    cfg: RunConfig, run: _Run, splits, metrics: dict, speed: dict, extra: dict[str, Any]
) -> Manifest:
    spec, task = METHODS[cfg.method.name], TASKS[cfg.task]
    fields = {
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "pooling": run.pooling,  # resolved from model.pooling; reloads pool the same way
        "head_init": run.head_init,  # resolved from model.head_init; only training reads it
        "dtype": run.dtype,  # resolved from model.dtype; reloads compute in it whatever the machine's auto would pick
        "peft_native": spec.peft_native,
        "task": cfg.task,
        "labels": splits.labels,
        "num_outputs": task.num_outputs(splits.labels),
        "base": {
            # An alias resolves anywhere the package is installed; a path is stored absolute so that
            # peftkit.load finds the base from any working directory.
            "name": cfg.model.name if cfg.model.name in models.ALIASES else str(run.base.source),
            "sha256": run.base.sha256,
            "model_type": run.ctx.model_type,
            "architecture": (run.base.config.get("architectures") or ["?"])[0],
        },
        "quant": cfg.model.quant,
        "head_names": list(run.heads),
        "trainable_params": run.trainable_params,
        "total_params": run.total_params,
        "trainable_percent": 100.0 * run.trainable_params / run.total_params,
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


def _needs_autocast(run: _Run) -> bool:
    """bf16 autocast only when the run asked for bf16 but its weights are all float32 (full fine-tuning keeps float32
    master weights); a bf16-stored base already computes in bf16."""
    import torch

    return run.dtype == "bfloat16" and all(p.dtype != torch.bfloat16 for p in run.model.parameters())


def head_parameters(model, head_names) -> list:
    """The trainable parameters of the task head (trained at ``train.head_lr``)."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and any(part in head_names for part in name.split("."))
    ]


def _last_loss(history: list[dict]) -> float | None:
    losses = [e["loss"] for e in history if "loss" in e]
    return losses[-1] if losses else None


def _is_synthetic(frame) -> bool:
    """Rows made by `peftkit data synth` carry ``synthetic=True``; the manifest and model card must say so."""
    return "synthetic" in frame.columns and bool(frame["synthetic"].astype(str).str.lower().eq("true").all())


def _jsonable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, list, dict, type(None)))}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
