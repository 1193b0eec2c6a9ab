"""Shared plumbing for the methods peft implements (LoRA, AdaLoRA, prefix): apply, attach, save."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def apply_peft(base: nn.Module, peft_config) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(base, peft_config)


def attach_peft(base: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder), is_trainable=False)


def save_peft(model: nn.Module, folder: Path) -> None:
    # safetensors only; peft also writes the task head (modules_to_save) into the same file.
    model.save_pretrained(str(folder), safe_serialization=True)

