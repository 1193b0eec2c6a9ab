"""Full fine-tuning: every weight of the base trains, the reference the PEFT methods are judged against.

Nothing is injected: the base (with its fresh task head) is unfrozen and trained as the classic fine-tuning tutorials
do, with float32 master weights (bf16 autocast on GPU). It is the most accurate and the most expensive choice: 100% of
the parameters train, the optimizer holds two more copies of them, and the "adapter" folder is a whole model. It
cannot train over an 8-bit base (int8 weights have no gradients), and an adapter bank cannot hot-swap it: a bank
switches small adapters over one shared base, and here nothing is shared.

The folder holds ``adapter_config.json`` (``{"peftkit_method": "full"}``, deliberately without ``peft_type``) and
``adapter_model.safetensors`` with every weight of the model keyed as in the transformers model, so
``peftkit.load`` reloads it onto the same base architecture and checks the base's identity like any adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from peftkit.artifacts.names import ADAPTER_CONFIG, WEIGHTS
from peftkit.errors import PeftkitError
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec


class FullOptions(MethodOptions):
    name: Literal["full"] = "full"


def apply(base: nn.Module, opts: FullOptions, ctx: MethodContext) -> nn.Module:
    if any(p.dtype != torch.float32 for p in base.parameters()):
        base = base.float()  # fp32 master weights: AdamW on bf16 weights loses small updates
    return base.requires_grad_(True)


def save(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # Tied weights (an LM head sharing the input embeddings; sequence-classification heads of the packaged models
    # tie nothing) share storage, which safetensors refuses: each is stored once and `attach` re-ties them.
    tied = _tied_names(model)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in model.state_dict().items() if k not in tied}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peftkit_method": "full"}, indent=2) + "\n")


def attach(base: nn.Module, folder: Path, name: str = "default") -> nn.Module:
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / WEIGHTS))
    tied = _tied_names(base)
    result = base.float().load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise PeftkitError(
            f"{folder}: these weights do not fit the base model (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); pass the base it was trained on"
        )
    if tied:
        base.tie_weights()
    return base.requires_grad_(False)


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names whose tensor is the same storage as an earlier name's (tied embeddings)."""
    seen: set[int] = set()
    tied = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            tied.add(name)
        seen.add(tensor.data_ptr())
    return tied


def warm_start(model: nn.Module, folder: Path) -> None:
    attach(model, folder).requires_grad_(True)


SPEC = MethodSpec(
    name="full",
    summary="full fine-tuning: every weight trains (the reference; 100% params, a whole-model folder)",
    options=FullOptions,
    default_lr=5e-5,
    max_lr_scale=1.0,  # every weight moves: a short run is no reason to move them faster
    peft_native=False,
    apply=apply,
    attach=attach,
    save=save,
    warm_start=warm_start,
    full_model=True,
)
