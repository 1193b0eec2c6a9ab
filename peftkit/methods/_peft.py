"""Shared plumbing for the methods peft implements (LoRA, AdaLoRA, prefix): apply, attach, save."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def apply_peft(base: nn.Module, peft_config) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(base, peft_config)


def attach_peft(base: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    with warnings.catch_warnings():
        # AdaLoRA's rank_pattern is keyed by parameter name; peft's generic check misreads it as unmatched modules
        # although AdaLoRA applies it (the reload tests prove the ranks and outputs match).
        warnings.filterwarnings("ignore", message="The following rank_pattern keys")
        return PeftModel.from_pretrained(base, str(folder), is_trainable=False)


def save_peft(model: nn.Module, folder: Path) -> None:
    # safetensors only; peft also writes the task head (modules_to_save) into the same file.
    with warnings.catch_warnings():
        # A module AdaLoRA pruned to rank 0 saves (0, d) tensors; peft mistakes them for unsharded ZeRO-3 weights.
        warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
        model.save_pretrained(str(folder), safe_serialization=True)
