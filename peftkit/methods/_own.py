"""Shared plumbing for the methods peftkit implements itself (bottleneck, prefix): the task head that travels with
each adapter, and reading an adapter's safetensors file.

Several adapters loaded into one model share the transformers model's single head module, so each keeps its own
head weights as plain tensors and the one that answers copies them in (a few KB per switch; simpler than wrapping
the head once per adapter).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peftkit.artifacts.names import PICKLE_WEIGHTS, WEIGHTS
from peftkit.errors import PeftkitError

DEFAULT_ADAPTER = "default"


def find_module(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise PeftkitError(f"{what} {name!r} does not exist in this base model") from None


def head_params(model: nn.Module, head_names) -> dict[str, nn.Parameter]:
    """The task head's parameters keyed by their path in `model` (``classifier.weight``...), checked trainable."""
    params = {}
    for head in head_names:
        for n, p in find_module(model, head, "task head").named_parameters():
            if not p.is_floating_point():
                raise PeftkitError(
                    f"task head parameter {head}.{n} is {p.dtype}: keep the head unquantized "
                    f"(BitsAndBytesConfig(llm_int8_skip_modules=[{head!r}]))"
                )
            params[f"{head}.{n}"] = p
    return params


def head_tensors(model: nn.Module, head_names) -> dict[str, torch.Tensor]:
    """A detached copy of the head's current weights (what an adapter keeps for its own head)."""
    return {k: p.detach().clone() for k, p in head_params(model, head_names).items()}


def set_head(model: nn.Module, head_names, tensors: dict[str, torch.Tensor]) -> None:
    """Copy an adapter's kept head weights into the shared head module."""
    with torch.no_grad():
        for key, p in head_params(model, head_names).items():
            p.copy_(tensors[key])


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/adapter_model.safetensors``; a pickle (``adapter_model.bin``) is refused."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        if (folder / PICKLE_WEIGHTS).is_file():
            raise PeftkitError(
                f"{folder} holds {PICKLE_WEIGHTS}, a pickle: peftkit loads adapters from {WEIGHTS} only "
                "(unpickling can run arbitrary code)"
            )
        raise PeftkitError(f"{folder} has no {WEIGHTS}")
    return load_file(str(folder / WEIGHTS))
