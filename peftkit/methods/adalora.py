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

from peftkit.artifacts.names import ADAPTER_CONFIG
from peftkit.methods._peft import PEFT_BANK_CALLS, apply_peft, attach_peft, save_peft
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec, Preflight


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


# peftkit doctor's preflight: fewer rank allocations than this and the "adaptive" part barely happens (the default
# schedule aims at ~20)...
MIN_ALLOCATIONS = 5
# ...and a final budget under this share of the starting ranks leaves most modules at rank 0 or 1.
MIN_KEPT_SHARE = 0.1


def allocation_plan(opts: AdaLoraOptions, total_steps: int) -> tuple[dict[str, int], int]:
    """AdaLoRA's schedule for a run (`schedule`) and how many times ranks get reallocated.

    peft reallocates at every step s with tinit < s < total_step - tfinal and s % deltaT == 0, then once more, forced,
    at s == total_step - tfinal (``AdaLoraModel.update_and_allocate``); peftkit calls it with s = 1..total_step.
    """
    sched = schedule(opts, total_steps)
    end, tinit, delta = sched["total_step"] - sched["tfinal"], sched["tinit"], sched["deltaT"]
    inside = max(0, (end - 1) // delta - tinit // delta) if end - 1 > tinit else 0
    return sched, inside + (1 if end >= 1 else 0)


def preflight(model, opts: AdaLoraOptions, runs: list[tuple[str, MethodContext]]) -> Preflight:
    """A short run leaves no room for rank allocation to work: the schedule of each planned run ``(label, ctx)``, and
    the rank budget of `model` (the applied meta-device model; None when applying failed)."""
    warnings, facts = [], []
    for label, ctx in runs:
        sched, allocations = allocation_plan(opts, ctx.total_steps)
        facts.append(
            f"{label}: {ctx.total_steps} steps, tinit {sched['tinit']}, tfinal {sched['tfinal']}, "
            f"deltaT {sched['deltaT']}, {allocations} allocation(s)"
        )
        if opts.warmup_fraction > 0 and sched["tinit"] == 0:
            warnings.append(
                f"{label} is too short for a warmup (tinit collapses to 0): ranks are pruned on untrained importance scores"
            )
        if allocations < MIN_ALLOCATIONS:
            warnings.append(f"{label} allocates ranks only {allocations} time(s) (< {MIN_ALLOCATIONS})")
    fixes = (
        ["train longer (--epochs, --max-steps) or use --method lora for runs this short"] if warnings else []
    )
    allocator = getattr(getattr(model, "base_model", None), "rankallocator", None)
    if allocator is not None:
        start, final, modules = allocator.init_bgt, allocator.target_bgt, len(allocator.name_set)
        facts.append(f"rank budget {start} -> {final} over {modules} modules")
        if final < MIN_KEPT_SHARE * start:
            warnings.append(
                f"the final budget keeps {final} of {start} ranks (under {MIN_KEPT_SHARE:.0%}): most modules end at rank 0 or 1"
            )
            fixes.append("raise method.target_r (or lower method.init_r)")
    return Preflight(warnings, facts, fixes)


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
    cfg = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    pattern = cfg.get("rank_pattern") or {}
    ranks = {name: int(sum(mask)) for name, mask in pattern.items()}
    return {
        "init_r": cfg.get("init_r"),
        "target_r": cfg.get("target_r"),
        "schedule": {k: cfg.get(k) for k in ("total_step", "tinit", "tfinal", "deltaT")},
        "rank_pattern": ranks,
        "total_rank": sum(ranks.values()),
    }


def to_lora(cfg: dict, tensors: dict) -> tuple[dict, dict]:
    """The saved AdaLoRA adapter as plain LoRA with the same update, exactly (`MethodSpec.to_lora`).

    peft's AdaLoRA ``SVDLinear`` adds ``ΔW = lora_B @ (lora_A * lora_E) * scaling / (ranknum + 1e-5)`` with
    ``lora_A`` (k, d_in), ``lora_E`` (k, 1) the singular values, ``lora_B`` (d_out, k), ``scaling = lora_alpha``
    (``init_r`` when alpha <= 0), and ``ranknum = init_r``: peft saves each module cut to its allocated rank k
    (``rank_pattern``) and, on load, keeps ``ranknum`` at ``init_r``. Plain LoRA adds ``(alpha_k / r_k) * B @ A``,
    so with ``A = lora_A * lora_E * scaling / (init_r + 1e-5)``, ``B = lora_B`` and ``alpha_k = r_k = k`` the two
    are the same. Ranks differ per module, so every module gets its own ``rank_pattern``/``alpha_pattern`` entry;
    the global ``r = lora_alpha = max k`` keeps vLLM, which applies one ``lora_alpha / r`` to all modules, at
    scale 1 too. Modules pruned to rank 0 add nothing and are dropped (``exclude_modules``).

    Returns:
        (the LoRA adapter config, with ``export_facts``: the dropped module paths and the folded scale, for
        export.json; LoRA tensors keyed ``base_model.model.<path>.lora_{A,B}.weight``).
    """
    import re

    from peftkit.errors import PeftkitError

    def path_of(key: str) -> str:  # `base_model.model.<path>.lora_A` -> `<path>`
        return re.sub(r"\.lora_[ABE]$", "", key).removeprefix("base_model.model.")

    init_r = int(cfg["init_r"])
    scaling = cfg["lora_alpha"] if cfg["lora_alpha"] > 0 else float(init_r)
    scale = scaling / (init_r + 1e-5)
    pattern = {path_of(k): sum(v) for k, v in (cfg.get("rank_pattern") or {}).items()}
    odd = [k for k in tensors if not re.search(r"\.lora_[ABE]$", k)]
    if odd:
        raise PeftkitError(f"AdaLoRA weights hold {len(odd)} unexpected tensor(s) (first: {odd[0]})")
    out, ranks, dropped = {}, {}, []
    for key in sorted(k for k in tensors if k.endswith(".lora_A")):
        stem = key.removesuffix(".lora_A")
        a, e, b = tensors[key], tensors[f"{stem}.lora_E"], tensors[f"{stem}.lora_B"]
        path, k = path_of(key), a.shape[0]
        if path in pattern and pattern[path] != k:
            raise PeftkitError(
                f"AdaLoRA weights of {path} have rank {k} but rank_pattern allocates {pattern[path]}; "
                "the adapter folder is inconsistent"
            )
        if k == 0:
            dropped.append(path)
            continue
        # float64 for the product, then back to the saved dtype: one rounding, as peft's own forward has.
        out[f"{stem}.lora_A.weight"] = (a.double() * e.double() * scale).to(a.dtype)
        out[f"{stem}.lora_B.weight"] = b.clone()
        ranks[path] = int(k)
    top = max(ranks.values(), default=0)
    folding = {"init_r": init_r, "lora_alpha": cfg["lora_alpha"], "folded_scale": scale}
    lora_cfg = {**cfg, "peft_type": "LORA", "r": top, "lora_alpha": top, "use_rslora": False}
    lora_cfg |= {"rank_pattern": dict(ranks), "alpha_pattern": dict(ranks)}
    lora_cfg["exclude_modules"] = dropped or cfg.get("exclude_modules")
    lora_cfg["export_facts"] = {"dropped_modules": dropped, "adalora": folding}
    return lora_cfg, out


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
    preflight=preflight,
    extra_loss=orthogonality_penalty,
    describe=describe,
    to_lora=to_lora,
)
