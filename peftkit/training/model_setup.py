"""The model a run trains: the base resolved and loaded with a fresh task head, then the method applied to it.

    setup = setup_model(cfg, splits)  # setup.model: only the adapter and the head are trainable

`peftkit.training.loop` trains it; the manifest records what was resolved here (pooling, dtype, head init).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftkit import heads as head_inits
from peftkit import models
from peftkit import pooling as poolings
from peftkit.config import RunConfig
from peftkit.data import Splits
from peftkit.methods import METHODS, MethodContext
from peftkit.runtime import world_size
from peftkit.tasks import TASKS
from peftkit.training.plan import Plan, make_plan

log = logging.getLogger("peftkit")


@dataclass
class ModelSetup:
    """What `setup_model` produced: the base's identity, the model ready to train and what was resolved for it."""

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


def setup_model(cfg: RunConfig, splits: Splits, init_from: Path | None = None) -> ModelSetup:
    """Resolve and load the base with a fresh head, then apply the method (only adapter + head trainable), starting
    from the adapter in `init_from` when given."""
    from transformers import set_seed

    base = models.resolve(cfg.model.name)
    tokenizer = models.load_tokenizer(base)
    device = models.default_device()
    dtype, why = models.resolve_dtype(cfg.model.dtype, device, cfg.model.quant, cfg.method.name)
    log.info("base: %s (%s; %s)", cfg.model.name, "8-bit" if cfg.model.quant == "8bit" else dtype, why)
    set_seed(cfg.train.seed)  # the fresh head's initial weights depend on it
    pooling = poolings.resolve(base.folder, base.config, cfg.model.pooling)
    log.info("pooling: %s%s", pooling, " (model.pooling=auto)" if cfg.model.pooling == "auto" else "")
    model, heads, head_init = _load_with_head(cfg, splits, base, tokenizer, dtype, device, pooling)
    total = sum(p.numel() for p in model.parameters())
    if cfg.train.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input-embedding grads, so it also works on a frozen 8-bit base.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    world = world_size()
    plan = make_plan(len(splits.train_texts), cfg, world, head_init)
    ctx = MethodContext(model.config.model_type, heads, plan.steps, cfg.model.quant == "8bit")
    model = _apply_method(cfg, model, ctx, splits, head_init, init_from)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "method: %s, %s trainable params (%.3f%% of %s)",
        METHODS[cfg.method.name].name,
        f"{trainable:,}",
        100 * trainable / total,
        f"{total:,}",
    )
    log.info("plan: %s", plan.describe())
    return ModelSetup(
        base, tokenizer, model, heads, ctx, world, device, total, trainable, pooling, dtype, plan, head_init
    )


def _load_with_head(
    cfg: RunConfig, splits: Splits, base: models.BaseRef, tokenizer, dtype: str, device: str, pooling: str
) -> tuple[Any, tuple[str, ...], str]:
    """The base model with a fresh task head, initialised as model.head_init resolves; returns the model, the
    head's module names and the resolved head init."""
    task = TASKS[cfg.task]
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
    return model, heads, head_init


def _apply_method(
    cfg: RunConfig, model, ctx: MethodContext, splits: Splits, head_init: str, init_from: Path | None
):
    """`model` with the method applied (only adapter and head trainable), warm-started from `init_from` if given."""
    from peftkit import dropout

    spec = METHODS[cfg.method.name]
    model = spec.apply(model, cfg.method, ctx)
    dropout.install(model)  # same masks' distribution, under half the CPU time (peftkit.dropout)
    if head_init == "cumulative":
        head_inits.tie_rows(model, ctx.head_names, TASKS[cfg.task].num_outputs(splits.labels))
    if init_from is not None:
        log.info("warm start from %s", init_from)
        spec.warm_start(model, Path(init_from))
    return model


def needs_autocast(setup: ModelSetup) -> bool:
    """bf16 autocast only when the run asked for bf16 but its weights are all float32 (full fine-tuning keeps float32
    master weights); a bf16-stored base already computes in bf16."""
    import torch

    return setup.dtype == "bfloat16" and all(p.dtype != torch.bfloat16 for p in setup.model.parameters())


def head_parameters(model, head_names) -> list:
    """The trainable parameters of the task head (trained at ``train.head_lr``)."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and any(part in head_names for part in name.split("."))
    ]
