"""LoRA: Low-Rank Adaptation (Hu et al., 2021, arXiv:2106.09685).

Each targeted weight W (d_out x d_in) stays frozen and gains a trainable update (alpha / r) * B @ A, with
A: (r, d_in) and B: (d_out, r), B initialised to zero so training starts from the base model. Only A, B and the task
head train: about 0.2-1% of the parameters. Implemented by peft; the adapter folder loads with plain peft.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftkit.methods._peft import PEFT_BANK_CALLS, apply_peft, attach_peft, save_peft
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec


class LoraOptions(MethodOptions):
    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0, description="rank of the update; higher: more capacity, more parameters")
    alpha: int = Field(16, gt=0, description="scale alpha/r applied to the update")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(
        None,
        description="module names to adapt, or 'all-linear'; default: peft's choice for the architecture",
    )


def apply(base, opts: LoraOptions, ctx: MethodContext):
    from peft import LoraConfig, TaskType

    return apply_peft(
        base,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules,
            modules_to_save=list(ctx.head_names),
        ),
    )


def to_lora(cfg: dict, tensors: dict) -> tuple[dict, dict]:
    """A saved LoRA adapter is plain LoRA already: its adapter config and tensors as saved (`MethodSpec.to_lora`)."""
    return cfg, tensors


SPEC = MethodSpec(
    name="lora",
    summary="low-rank updates B@A on attention weights (peft); the usual first choice",
    options=LoraOptions,
    default_lr=1e-3,
    peft_native=True,
    apply=apply,
    attach=attach_peft,
    save=save_peft,
    **PEFT_BANK_CALLS,
    mixed_batch=True,
    to_lora=to_lora,
)
