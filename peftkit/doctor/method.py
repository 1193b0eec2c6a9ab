"""The ``method`` row (the method applied to the meta-device model, as training applies it) and the row of the
method's own preflight (`MethodSpec.preflight`: AdaLoRA's schedule), run for every run doctor plans."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from peftkit.doctor.check import OK, WARN, Check, Facts, one_line
from peftkit.doctor.model import meta_model
from peftkit.doctor.plan import planned_runs, total_steps
from peftkit.errors import PeftkitError


def check_method(facts: Facts) -> Check:
    """Apply the method to the meta-device model as training would: target modules, method quirks, adapter size."""
    from peftkit.methods import METHODS

    cfg = facts.cfg
    spec = METHODS[cfg.method.name]
    if facts.hf_config is None:
        return Check(
            "method",
            WARN,
            f"{spec.name}: not checked, the base model did not resolve",
            "fix the model row first",
        )
    model, total = _apply(facts, spec)
    facts.adapted = model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    facts.adapter_bytes = trainable * 4  # adapter and head are saved in fp32
    notes = [f"gradient checkpointing {'on' if cfg.train.gradient_checkpointing else 'off'}"]
    if cfg.model.quant == "8bit":
        notes.append("8-bit base, adapter and head in fp32")
    if cfg.segments is not None and not spec.mixed_batch:
        mixing = ", ".join(name for name, other in METHODS.items() if other.mixed_batch)
        notes.append(
            f"serving a bank runs one adapter per forward pass (only {mixing} mixes adapters in one batch)"
        )
    return Check(
        "method",
        OK,
        f"{spec.name} on {facts.hf_config.model_type}: {trainable:,} trainable params ({100 * trainable / total:.3f}% "
        f"of {total:,}), adapter about {facts.adapter_bytes / 1e6:.1f} MB; " + "; ".join(notes),
    )


def _apply(facts: Facts, spec) -> tuple[Any, int]:
    """(the meta-device model with `spec` applied by the call training makes, the base's parameter count); records
    the context it was applied with in `facts`."""
    import torch

    from peftkit.methods import MethodContext
    from peftkit.models import HEAD_NAMES
    from peftkit.tasks import TASKS

    cfg = facts.cfg
    hf_config = copy.deepcopy(facts.hf_config)
    hf_config.num_labels = TASKS[cfg.task].num_outputs(facts.splits.labels if facts.splits else ["a", "b"])
    model = meta_model(hf_config, cfg.model.name)
    model.requires_grad_(False)
    heads = tuple(h for h in HEAD_NAMES if isinstance(getattr(model, h, None), torch.nn.Module))
    total = sum(p.numel() for p in model.parameters())
    if cfg.train.gradient_checkpointing:  # as training does, before the method: prefix tuning refuses it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ctx = facts.method_ctx = MethodContext(
        hf_config.model_type, heads, total_steps(facts) or 1, cfg.model.quant == "8bit"
    )
    try:
        return spec.apply(model, cfg.method, ctx), total
    except PeftkitError:
        raise
    except Exception as exc:  # peft's ValueErrors: target modules not found, unsupported layer types...
        raise PeftkitError(
            f"{spec.name} cannot be applied to this {hf_config.model_type} model: {one_line(exc, 240)}"
        ) from None


def check_preflight(facts: Facts) -> Check | None:
    """The method's own warnings about the planned runs (`MethodSpec.preflight`); None for methods without any."""
    from peftkit.methods import METHODS, MethodContext

    cfg = facts.cfg
    spec = METHODS[cfg.method.name]
    if spec.preflight is None:
        return None
    name = preflight_name(spec.name)
    runs = planned_runs(facts)
    if not runs:
        return Check(
            name,
            WARN,
            "not checked: the run length needs the training row count, and the data check failed",
            "fix the data row (or set --max-steps)",
        )
    base = facts.method_ctx or MethodContext("", (), quantized=cfg.model.quant == "8bit")
    contexts = [(label, dataclasses.replace(base, total_steps=steps)) for label, steps in runs]
    found = spec.preflight(facts.adapted, cfg.method, contexts)
    if found.warnings:
        return Check(name, WARN, "; ".join(found.warnings + found.facts), "; ".join(found.fixes))
    return Check(name, OK, "; ".join(found.facts))


def preflight_name(method: str) -> str:
    """The report row of a method's preflight (``adalora schedule``)."""
    return f"{method} schedule"
