"""The one training path, for every method: data -> base model -> method -> HF Trainer -> adapter folder.

    cfg = peftkit.config.load_config("recipes/reviews/minilm-l6_lora.yaml")
    result = peftkit.train.train(cfg)

transformers' Trainer does the loop (accumulation, mixed precision, checkpoints, resume, logging, distributed);
peftkit adds its task losses, method hooks (AdaLoRA's rank allocation, as callbacks) and a NaN guard.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit import models
from peftkit.adapter import FORMAT_VERSION, check_output, package_versions, save_with
from peftkit.config import RunConfig
from peftkit.data import load_splits
from peftkit.errors import NonFiniteLossError, PeftkitError
from peftkit.methods import METHODS, MethodContext
from peftkit.predictor import Predictor
from peftkit.tasks import TASKS

log = logging.getLogger("peftkit")


@dataclass
class TrainResult:
    output: Path
    manifest: dict[str, Any]
    predictor: Predictor

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest["metrics"]


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoints"


def train(
    cfg: RunConfig,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> TrainResult:
    """Train one adapter as `cfg` says and write its folder; returns the folder, manifest and a ready predictor.

    Args:
        cfg: the resolved run config (`peftkit.config.load_config`).
        overwrite: replace a different adapter already in the output folder.
        resume: continue from the last checkpoint of an interrupted run with the same output folder.
        progress: show Trainer's progress bar (stderr).
        callbacks: extra `transformers.TrainerCallback`s, e.g. for custom logging or early stopping.
    """
    import torch
    from transformers import TrainingArguments, set_seed

    out = Path(cfg.output or cfg.default_output())
    config_dump = cfg.model_dump(mode="json")
    check_output(out, config_dump, overwrite=overwrite)
    ckpt = checkpoint_dir(out)
    last_ckpt = _last_checkpoint(ckpt) if resume else None
    if resume and last_ckpt is None:
        raise PeftkitError(f"--resume: no checkpoint in {ckpt} to continue from; run without --resume")

    spec, task = METHODS[cfg.method.name], TASKS[cfg.task]
    splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    log.info(
        "data: %d train / %d eval rows from %s%s",
        len(splits.train_texts),
        len(splits.eval_texts),
        cfg.data.train,
        f", labels {', '.join(splits.labels)}" if splits.labels else "",
    )
    log.info("base: %s (%s)", cfg.model.name, "8-bit" if cfg.model.quant == "8bit" else cfg.model.dtype)
    base = models.resolve(cfg.model.name)
    tokenizer = models.load_tokenizer(base)
    device = models.default_device()

    set_seed(cfg.train.seed)  # the fresh head's initial weights depend on it
    model, heads = models.load_base(
        base,
        task.num_outputs(splits.labels),
        quant=cfg.model.quant,
        dtype=cfg.model.dtype,
        device=device,
        pad_token_id=tokenizer.pad_token_id,
    )
    total_params = sum(p.numel() for p in model.parameters())
    if cfg.train.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input-embedding grads, so it also works on a frozen 8-bit base.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    total_steps = _total_steps(len(splits.train_texts), cfg, world)
    ctx = MethodContext(model.config.model_type, heads, total_steps, cfg.model.quant == "8bit")
    model = spec.apply(model, cfg.method, ctx)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "method: %s, %s trainable params (%.3f%% of %s), %d optimizer steps, lr %g",
        spec.name,
        f"{trainable:,}",
        100 * trainable / total_params,
        f"{total_params:,}",
        total_steps,
        cfg.lr,
    )

    ckpt.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(ckpt),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        lr_scheduler_type=cfg.train.scheduler,
        warmup_steps=cfg.train.warmup_ratio,  # a float < 1 is a fraction of the run
        weight_decay=cfg.train.weight_decay,
        seed=cfg.train.seed,
        logging_steps=cfg.train.logging_steps,
        logging_nan_inf_filter=False,  # the default logs 0.0 for a NaN loss, hiding the failure
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        save_total_limit=2,
        report_to=cfg.train.report_to or "none",
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=models.torch_dtype(cfg.model.dtype, device) == torch.bfloat16,  # autocast for the fp32 adapter
        disable_tqdm=not progress,
        dataloader_pin_memory=device.startswith("cuda"),
        use_cpu=device == "cpu",
    )
    trainer = _make_trainer(
        model,
        args,
        _encode(tokenizer, splits.train_texts, splits.train_labels, cfg),
        tokenizer,
        task,
        spec,
        spec.callbacks(model, cfg.method, ctx) + list(callbacks or []),
    )
    started = time.perf_counter()
    try:
        train_out = trainer.train(resume_from_checkpoint=str(last_ckpt) if last_ckpt else None)
    except NonFiniteLossError as exc:
        keep = ckpt / "last-good"
        spec.save(
            trainer.model, keep
        )  # the failing step raised before backward: these weights are still finite
        raise NonFiniteLossError(
            f"{exc}; the last good weights are in {keep}; lower --lr or check the labels"
        ) from None
    seconds = time.perf_counter() - started

    predictor = Predictor(
        model,
        tokenizer,
        task=cfg.task,
        labels=splits.labels,
        max_length=cfg.data.max_length,
        adapter=out.name,
        batch_size=cfg.train.eval_batch_size,
    )
    import numpy as np

    log.info("evaluating on %d held-out rows", len(splits.eval_texts))
    metrics = task.metrics(np.asarray(splits.eval_labels), task.decode(predictor.logits(splits.eval_texts)))
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": spec.name,
        "peft_native": spec.peft_native,
        "task": cfg.task,
        "labels": splits.labels,
        "num_outputs": task.num_outputs(splits.labels),
        "base": {
            "name": cfg.model.name,
            "sha256": base.sha256,
            "model_type": model.config.model_type,
            "architecture": (base.config.get("architectures") or ["?"])[0],
        },
        "quant": cfg.model.quant,
        "head_names": list(heads),
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_percent": 100.0 * trainable / total_params,
        "metrics": metrics,
        "data": {
            "train_source": cfg.data.train,
            "eval_source": cfg.data.eval or f"{cfg.data.eval_fraction:.0%} split",
            "train_rows": len(splits.train_texts),
            "eval_rows": len(splits.eval_texts),
            **_jsonable(splits.stats),
        },
        "train": {
            "steps": trainer.state.global_step,
            "seconds": seconds,
            "device": device,
            "world_size": world,
            "samples_per_second": train_out.metrics.get("train_samples_per_second", 0.0),
            "final_loss": _last_loss(trainer.state.log_history),
        },
        "config": config_dump,
        "versions": package_versions(),
    }
    predictor.manifest = manifest
    if trainer.is_world_process_zero():
        save_with(lambda tmp: spec.save(model, tmp), out, manifest, trainer.state.log_history)
        _remove_tree(ckpt)
    return TrainResult(out, manifest, predictor)


def _total_steps(n_rows: int, cfg: RunConfig, world: int) -> int:
    """Optimizer steps the run will take, as Trainer computes them (AdaLoRA's schedule needs this up front)."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    batches = math.ceil(n_rows / (cfg.train.batch_size * world))
    per_epoch = max(1, batches // cfg.train.grad_accum)
    return max(1, math.ceil(cfg.train.epochs * per_epoch))


def _encode(tokenizer, texts: list[str], labels: list, cfg: RunConfig):
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)
    columns = {k: enc[k] for k in enc.keys()}
    return Dataset.from_dict({**columns, "labels": labels, "length": [len(ids) for ids in enc["input_ids"]]})


def _make_trainer(model, args, dataset, tokenizer, task, spec, callbacks):
    import torch
    from transformers import DataCollatorWithPadding, Trainer

    pad = DataCollatorWithPadding(tokenizer)

    def collate(features):  # the `length` column is for the length-grouped sampler, not the model
        return pad([{k: v for k, v in f.items() if k != "length"} for f in features])

    class PeftkitTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = task.loss(outputs.logits, labels)
            if spec.extra_loss is not None and model.training:
                loss = loss + spec.extra_loss(self.accelerator.unwrap_model(model))
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}"
                )
            return (loss, outputs) if return_outputs else loss

        def _save(self, output_dir=None, state_dict=None):
            # Checkpoints hold the adapter and head only (a few MB), never the frozen base.
            spec.save(self.accelerator.unwrap_model(self.model), Path(output_dir or self.args.output_dir))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if spec.peft_native:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            from safetensors.torch import load_file

            target = self.accelerator.unwrap_model(model or self.model)
            inner = getattr(target, "model", target)
            result = inner.load_state_dict(
                load_file(str(Path(resume_from_checkpoint) / "adapter_model.safetensors")), strict=False
            )
            if result.unexpected_keys:
                raise PeftkitError(
                    f"checkpoint {resume_from_checkpoint} does not match this model; drop --resume"
                )

    return PeftkitTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=callbacks
    )


def _last_checkpoint(ckpt: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(found) if ckpt.is_dir() and (found := get_last_checkpoint(str(ckpt))) else None


def _last_loss(history: list[dict]) -> float | None:
    losses = [e["loss"] for e in history if "loss" in e]
    return losses[-1] if losses else None


def _jsonable(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, list, dict, type(None)))}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
