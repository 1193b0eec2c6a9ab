"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021). IN PROGRESS: being written by a helper."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec


class BottleneckOptions(MethodOptions):
    name: Literal["bottleneck"] = "bottleneck"
    bottleneck_dim: int = Field(64, gt=0)
    placement: Literal["houlsby", "pfeiffer"] = "pfeiffer"


def apply(base, opts: BottleneckOptions, ctx: MethodContext):
    raise NotImplementedError


def attach(base, folder):
    raise NotImplementedError


def save(model, folder):
    raise NotImplementedError


SPEC = MethodSpec(
    name="bottleneck",
    summary="small down-project / up-project MLPs after attention and/or MLP blocks (peftkit's own)",
    options=BottleneckOptions,
    default_lr=1e-3,
    peft_native=False,
    apply=apply,
    attach=attach,
    save=save,
)
