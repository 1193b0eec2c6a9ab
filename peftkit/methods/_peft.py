"""Shared plumbing for the methods peft implements (LoRA, AdaLoRA, prefix): apply, attach, save, and the
multi-adapter calls an adapter bank uses (load another adapter by name, switch, delete, warm start)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.artifacts.names import WEIGHTS

if TYPE_CHECKING:
    from torch import nn


def apply_peft(base: nn.Module, peft_config) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(base, peft_config)


@contextlib.contextmanager
def _quiet_loading():
    with warnings.catch_warnings():
        # AdaLoRA's rank_pattern is keyed by parameter name; peft's generic check misreads it as unmatched modules
        # although AdaLoRA applies it (the reload tests prove the ranks and outputs match).
        warnings.filterwarnings("ignore", message="The following rank_pattern keys")
        yield


def attach_peft(base: nn.Module, folder: Path, name: str = "default") -> nn.Module:
    from peft import PeftModel

    with _quiet_loading():
        return PeftModel.from_pretrained(base, str(folder), adapter_name=name, is_trainable=False)


def load_peft(model: nn.Module, folder: Path, name: str) -> None:
    """Add the adapter in `folder` to an attached peft model under `name`; the active adapter does not change."""
    with _quiet_loading():
        model.load_adapter(str(folder), adapter_name=name, is_trainable=False)


def set_peft(model: nn.Module, name: str) -> None:
    """Make `name` the active adapter, task head included.

    peft's ``set_adapter`` walks every module of the model twice to find the adapter layers (~6.5 ms on SmolLM2 with
    8 LoRA adapters loaded, most of a switch). The layers only change when an adapter is loaded or deleted, so they
    are found once per set of loaded adapters and switched through the same per-layer ``set_adapter`` peft calls.
    """
    if name not in model.peft_config:
        raise ValueError(f"adapter {name!r} is not loaded")
    if model.peft_config[name].is_prompt_learning:
        model.set_adapter(name)
        return
    for layer in _adapter_layers(model):
        layer.set_adapter(name, inference_mode=True)
    model.base_model.active_adapter = (
        name  # what peft's set_adapter records, on the tuner and on the PeftModel
    )
    model.active_adapter = name


def _adapter_layers(model: nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    key = tuple(model.peft_config)
    cached = getattr(model, "_peftkit_adapter_layers", None)
    if cached is None or cached[0] != key:
        layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        cached = (key, layers)
        model._peftkit_adapter_layers = cached
    return cached[1]


def delete_peft(model: nn.Module, name: str) -> None:
    """Free a loaded adapter that is not the active one."""
    if name == model.active_adapter:
        raise ValueError(f"adapter {name!r} is active; switch to another before deleting it")
    if not model.peft_config[name].is_prompt_learning:
        model.delete_adapter(name)
        return
    # peft's delete_adapter for prompt learning (peft 0.21) hands every remaining adapter to the task head's
    # wrapper as active, which the wrapper refuses when two or more remain; these are its steps with the one
    # adapter that is active.
    from peft.tuners.tuners_utils import _delete_auxiliary_adapter

    del model.peft_config[name]
    del model.prompt_encoder[name]
    del model.prompt_tokens[name]
    _delete_auxiliary_adapter(model.base_model, adapter_name=name, new_active_adapters=[model.active_adapter])


def save_peft(model: nn.Module, folder: Path) -> None:
    # safetensors only; peft also writes the task head (modules_to_save) into the same file.
    with warnings.catch_warnings():
        # A module AdaLoRA pruned to rank 0 saves (0, d) tensors; peft mistakes them for unsharded ZeRO-3 weights.
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
        model.save_pretrained(str(folder), safe_serialization=True)


def warm_start_peft(model: nn.Module, folder: Path) -> None:
    """Start a freshly applied adapter (and head) from the weights saved in `folder`.

    AdaLoRA saves each update pruned to its final rank; the fresh adapter has ``init_r``. The saved components fill
    the leading ranks and the rest keep their fresh initialisation (random P and Q, zero singular values), so the
    update starts equal to the saved one and the pruned ranks can still grow back.
    """
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from peftkit.errors import PeftkitError

    saved = load_file(str(Path(folder) / WEIGHTS))
    fresh = get_peft_model_state_dict(model)
    missing, unexpected = sorted(fresh.keys() - saved.keys()), sorted(saved.keys() - fresh.keys())
    if missing or unexpected:
        raise PeftkitError(
            f"warm start from {folder}: its weights do not fit this adapter (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); train the segment adapters with the same method options as the global one"
        )
    merged = {}
    for key, tensor in saved.items():
        target = fresh[key].detach().clone()
        if tensor.shape == target.shape:
            merged[key] = tensor
            continue
        if tensor.dim() != target.dim() or any(s > t for s, t in zip(tensor.shape, target.shape)):
            raise PeftkitError(
                f"warm start from {folder}: {key} has shape {tuple(tensor.shape)}, this adapter "
                f"{tuple(target.shape)}"
            )
        target[tuple(slice(0, s) for s in tensor.shape)] = tensor.to(target.dtype)
        merged[key] = target
    with torch.no_grad():
        set_peft_model_state_dict(model, merged)


PEFT_BANK_CALLS = {
    "load_adapter": load_peft,
    "set_adapter": set_peft,
    "delete_adapter": delete_peft,
    "warm_start": warm_start_peft,
}
