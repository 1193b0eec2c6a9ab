"""What every PEFT method provides: one `MethodSpec` per method, collected in `peftkit.methods.METHODS`.

The training loop and the loaders only talk to this interface, so a method's quirks (AdaLoRA's per-step rank
allocation, prefix tuning's refusal of gradient checkpointing, the bottleneck adapter's own file format) live in
the method's module and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import nn


class MethodOptions(BaseModel):
    """Base of each method's typed knobs (the `method:` section of a recipe). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodContext:
    """Facts about the run a method needs when it is applied.

    Attributes:
        model_type: ``config.model_type`` of the base (``"llama"``, ``"bert"``...), to pick default target modules.
        head_names: names of the task-head modules (``["classifier"]``, ``["score"]``...): trained and saved with
            the adapter.
        total_steps: optimizer steps the run will take (AdaLoRA's schedule needs it).
        quantized: the base was loaded in 8-bit.
    """

    model_type: str
    head_names: tuple[str, ...]
    total_steps: int = 0
    quantized: bool = False


class Preflight(NamedTuple):
    """What `peftkit doctor` reports about the planned runs of a method (the return of `MethodSpec.preflight`).

    Attributes:
        warnings: each makes the row a warning; empty: the runs look fine.
        facts: what was found, shown either way.
        fixes: what to do about the warnings.
    """

    warnings: list[str]
    facts: list[str]
    fixes: list[str]


@dataclass(frozen=True)
class MethodSpec:
    """One PEFT method.

    Attributes:
        name: the ``--method`` value.
        summary: one line for ``--help`` and docs.
        options: the method's `MethodOptions` subclass.
        default_lr: learning rate used when the recipe sets none (methods differ by orders of magnitude), for a run
            of ~500 optimizer steps; shorter runs scale it up (`peftkit.training.plan`).
        max_lr_scale: the most that scaling may multiply `default_lr` by (1: never scaled).
        settled_step: ``(options, ctx) -> step`` from which the adapter's shape no longer changes (AdaLoRA's final
            rank pattern): the best checkpoint is chosen among evaluations from that step on.
        peft_native: the adapter folder loads with plain ``peft.PeftModel.from_pretrained``.
        supports_gradient_checkpointing: False where the method breaks under it (prefix tuning).
        apply: ``(base, options, ctx) -> model`` returning the model to train, only adapter and head trainable.
        attach: ``(base, folder, name) -> model`` attaching a saved adapter for inference under ``name``.
        save: ``(model, folder)`` writing ``adapter_config.json`` + ``adapter_model.safetensors`` (head included).
        callbacks: ``(model, options, ctx) -> [TrainerCallback]`` hooks the loop installs (AdaLoRA's allocator).
        extra_loss: ``(model) -> tensor`` added to the task loss each step (AdaLoRA's orthogonality penalty).
        describe: ``(folder) -> dict`` method facts for ``peftkit inspect`` (AdaLoRA's final rank pattern).
        load_adapter: ``(model, folder, name)`` adds another saved adapter (and its head) to an attached model.
        set_adapter: ``(model, name)`` makes a loaded adapter (and its head) the one that answers.
        delete_adapter: ``(model, name)`` frees a loaded adapter that is not the only one.
        warm_start: ``(model, folder)`` sets a freshly applied adapter's weights from a saved one (segment
            adapters starting from the global adapter).
        full_model: every weight of the base trains and is saved (full fine-tuning): no adapter to hot-swap.
        mixed_batch: one forward pass serves rows for different adapters when given ``adapter_names=[...]``, one
            name per row (peft's LoRA); other methods are run one adapter group at a time.
        to_lora: ``(adapter_config, tensors) -> (lora_config, tensors)``: the saved adapter as a plain LoRA, for
            ``peftkit export`` (LoRA: as saved; AdaLoRA: its SVD triplets folded into A and B). None: the method
            cannot be exported as LoRA.
        preflight: ``(model, options, runs) -> Preflight``: what ``peftkit doctor`` reports about the planned runs
            of this method before they start (AdaLoRA: a schedule too short to reallocate ranks). ``model`` is the
            method applied to the meta-device base (None when that failed); ``runs`` holds ``(label, ctx)`` per
            run, ``ctx.total_steps`` its optimizer steps.
    """

    name: str
    summary: str
    options: type[MethodOptions]
    default_lr: float
    peft_native: bool
    apply: Callable[[nn.Module, Any, MethodContext], nn.Module]
    attach: Callable[..., nn.Module]
    save: Callable[[nn.Module, Path], None]
    supports_gradient_checkpointing: bool = True
    max_lr_scale: float = 4.0
    settled_step: Callable[[Any, MethodContext], int] = field(default=lambda options, ctx: 0)
    callbacks: Callable[[nn.Module, Any, MethodContext], list] = field(default=lambda model, options, ctx: [])
    extra_loss: Callable[[nn.Module], Any] | None = None
    describe: Callable[[Path], dict] = field(default=lambda folder: {})
    load_adapter: Callable[[nn.Module, Path, str], None] | None = None
    set_adapter: Callable[[nn.Module, str], None] | None = None
    delete_adapter: Callable[[nn.Module, str], None] | None = None
    warm_start: Callable[[nn.Module, Path], None] | None = None
    mixed_batch: bool = False
    full_model: bool = False
    to_lora: Callable[[dict, dict], tuple[dict, dict]] | None = None
    preflight: Callable[[nn.Module | None, Any, list[tuple[str, MethodContext]]], Preflight] | None = None
