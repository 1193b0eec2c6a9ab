"""AdaLoRA: adaptive budget allocation for LoRA (Zhang et al., 2023, arXiv:2303.10512).

Each update is kept in SVD form P @ diag(E) @ Q, starting at rank ``init_r`` everywhere. During training an
importance score (sensitivity x uncertainty, smoothed over steps) is tracked for every singular value, and the
lowest-scoring ones are pruned on a cubic schedule until ``target_r`` x modules remain in total: layers that matter
keep more rank. The allocation only happens when `update_and_allocate` is called after every optimizer step (plain
HF Trainer never calls it): the callback below does. The final rank pattern is saved in ``adapter_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from peftkit.methods._peft import PEFT_BANK_CALLS, apply_peft, attach_peft, save_peft
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec


class AdaLoraOptions(MethodOptions):
    name: Literal["adalora"] = "adalora"
    init_r: int = Field(12, gt=0, description="rank every module starts with")
    target_r: int = Field(
        4, gt=0, description="average rank left after pruning (total budget = target_r x modules)"
    )
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of steps before pruning starts (tinit)"
    )
    final_fraction: float = Field(0.2, ge=0, lt=1, description="share of steps at the final budget (tfinal)")
    delta_t: int | None = Field(None, gt=0, description="steps between allocations; default: ~20 per run")
    beta1: float = Field(0.85, gt=0, lt=1, description="smoothing of the importance score")
    beta2: float = Field(0.85, gt=0, lt=1, description="smoothing of its uncertainty")
    orth_reg_weight: float = Field(
        0.5, ge=0, description="keeps P and Q near-orthogonal so E stays a true SVD"
    )
    target_modules: list[str] | str | None = Field(
        None, description="default: peft's choice for the architecture"
    )

    @model_validator(mode="after")
    def _check(self) -> AdaLoraOptions:
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.warmup_fraction + self.final_fraction >= 1:
            raise ValueError(
                "warmup_fraction + final_fraction must be < 1, or no step is left for allocation"
            )
        return self


def schedule(opts: AdaLoraOptions, total_steps: int) -> dict[str, int]:
    """AdaLoRA's step schedule derived from the run length: the one place these numbers are computed."""
    tinit = int(opts.warmup_fraction * total_steps)
    tfinal = int(opts.final_fraction * total_steps)
    if tinit >= total_steps - tfinal:  # tiny runs: keep at least one allocation step
        tinit, tfinal = 0, 0
    delta_t = opts.delta_t or max(1, (total_steps - tinit - tfinal) // 20)
    return {"total_step": total_steps, "tinit": tinit, "tfinal": tfinal, "deltaT": delta_t}


def apply(base, opts: AdaLoraOptions, ctx: MethodContext):
    from peft import AdaLoraConfig, TaskType

    if ctx.total_steps < 1:
        raise ValueError("AdaLoRA needs the run's total optimizer steps")
    return apply_peft(
        base,
        AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=opts.init_r,
            target_r=opts.target_r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            beta1=opts.beta1,
            beta2=opts.beta2,
            orth_reg_weight=opts.orth_reg_weight,
            target_modules=opts.target_modules,
            modules_to_save=list(ctx.head_names),
            **schedule(opts, ctx.total_steps),
        ),
    )


def settled_step(opts: AdaLoraOptions, ctx: MethodContext) -> int:
    """The step that fixes the final rank pattern: an earlier adapter's ranks no longer match what saving keeps."""
    sched = schedule(opts, ctx.total_steps)
    return sched["total_step"] - sched["tfinal"]


def callbacks(model, opts, ctx):
    from transformers import TrainerCallback

    class Allocator(TrainerCallback):
        """Runs AdaLoRA's rank allocation after each optimizer step, while the gradients it scores still exist."""

        def on_optimizer_step(self, args, state, control, **kwargs):
            # global_step is incremented after this event; peft counts from 1 and must see total_step - tfinal
            # exactly once to fix the final budget.
            model.base_model.update_and_allocate(state.global_step + 1)

        def on_train_end(self, args, state, control, **kwargs):
            # Cut the pruned ranks away in memory, as saving does and peft's loading repeats: the trained model then
            # computes exactly what its reloaded folder computes (masked full-rank matmuls sum in another order, a
            # ~1e-6 difference in the logits). Saving leaves tensors that already have the kept rank as they are.
            peft_model = model.base_model
            name = peft_model.trainable_adapter_name
            if pattern := peft_model.peft_config[name].rank_pattern:
                peft_model.resize_modules_by_rank_pattern(pattern, name)

    return [Allocator()]


def orthogonality_penalty(model):
    """AdaLoRA's regulariser R(P, Q) = mean over matrices of ||P^T P - I||_F and ||Q Q^T - I||_F, times its weight.

    peft adds this only when the wrapped model returns its own loss; peftkit computes task losses itself (ordinal,
    regression), so the penalty is added here, from the same config field.
    """
    import torch

    peft_model = model.base_model
    weight = peft_model.peft_config[peft_model.trainable_adapter_name].orth_reg_weight
    terms = []
    for name, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p  # (r, r)
            terms.append(
                torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype))
            )
    if not terms or weight == 0:
        return torch.zeros((), device=next(model.parameters()).device)
    return weight * torch.stack(terms).mean()


def describe(folder: Path) -> dict:
    """Final ranks per adapted module, from the saved rank pattern (a boolean mask over ``init_r`` per module)."""
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    pattern = cfg.get("rank_pattern") or {}
    ranks = {name: int(sum(mask)) for name, mask in pattern.items()}
    return {
        "init_r": cfg.get("init_r"),
        "target_r": cfg.get("target_r"),
        "schedule": {k: cfg.get(k) for k in ("total_step", "tinit", "tfinal", "deltaT")},
        "rank_pattern": ranks,
        "total_rank": sum(ranks.values()),
    }


SPEC = MethodSpec(
    name="adalora",
    summary="LoRA whose per-layer ranks are pruned to a budget by importance during training (peft)",
    options=AdaLoraOptions,
    default_lr=2e-3,
    peft_native=True,
    apply=apply,
    attach=attach_peft,
    save=save_peft,
    **PEFT_BANK_CALLS,
    callbacks=callbacks,
    settled_step=settled_step,
    extra_loss=orthogonality_penalty,
    describe=describe,
)
