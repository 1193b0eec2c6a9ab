"""Prefix tuning (Li & Liang, 2021, arXiv:2101.00190).

The base stays entirely frozen; each layer's attention sees ``num_virtual_tokens`` extra trainable key/value
vectors prepended to the real ones, which steer the model toward the task. Nothing is inserted into the weights, so
prefix tuning cannot use gradient checkpointing (peft refuses it). Implemented by peft; loads with plain peft.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftkit.methods._peft import PEFT_BANK_CALLS, apply_peft, attach_peft, save_peft
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec


class PrefixOptions(MethodOptions):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(
        16, gt=0, description="prefix length; longer: more capacity, more attention cost"
    )
    prefix_projection: bool = Field(
        False, description="reparametrise the prefix through an MLP (stabler, bigger)"
    )
    encoder_hidden_size: int | None = Field(None, gt=0, description="MLP width when prefix_projection is on")


def apply(base, opts: PrefixOptions, ctx: MethodContext):
    from peft import PrefixTuningConfig, TaskType

    return apply_peft(
        base,
        PrefixTuningConfig(
            task_type=TaskType.SEQ_CLS,
            num_virtual_tokens=opts.num_virtual_tokens,
            prefix_projection=opts.prefix_projection,
            encoder_hidden_size=opts.encoder_hidden_size or base.config.hidden_size,
            modules_to_save=list(ctx.head_names),
        ),
    )


SPEC = MethodSpec(
    name="prefix",
    summary="trainable key/value prefix in every attention layer (peft); base weights untouched",
    options=PrefixOptions,
    default_lr=1e-2,
    peft_native=True,
    supports_gradient_checkpointing=False,
    apply=apply,
    attach=attach_peft,
    save=save_peft,
    **PEFT_BANK_CALLS,
)
