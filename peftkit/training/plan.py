"""What a run's size decides before its first step: how long it trains and at which learning rates.

A method's default learning rate suits a run of a few hundred optimizer steps. Users' first runs are often far
shorter (250 rows are 16 steps an epoch), and a freshly initialised head needs a larger step than a pretrained
adapter's. Unless the config sets them, a run therefore gets:

- ``epochs``: 1, or more on small data so the run takes at least `MIN_STEPS` optimizer steps (at most
  `MAX_AUTO_EPOCHS`). With the best checkpoint kept (`peftkit.selection`), the extra epochs cannot make the result
  worse on the held-out rows than the best epoch.
- ``lr``: the method's default, scaled by sqrt(`REFERENCE_STEPS` / steps) for shorter runs (the usual square-root
  rule for fewer, noisier updates), capped at the method's ``max_lr_scale``.
- ``head_lr``: `HEAD_LR_FACTOR` x the adapter's, at most `MAX_HEAD_LR` (never below the adapter's): a random linear
  head over pretrained features trains at a linear probe's rate. A verbalizer-initialised head already scores the
  labels, so it trains at the adapter's rate.

Every chosen value and the reason for it are printed and saved in the manifest (``train.plan``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from peftkit.artifacts.names import CHECKPOINTS, WEIGHTS
from peftkit.config import RunConfig
from peftkit.methods import METHODS

MIN_STEPS = 100
MAX_AUTO_EPOCHS = 10
REFERENCE_STEPS = 500
HEAD_LR_FACTOR = 5.0
MAX_HEAD_LR = 2e-2


@dataclass(frozen=True)
class Plan:
    epochs: float
    steps: int  # optimizer steps, as Trainer will count them
    lr: float
    head_lr: float
    why: dict[str, str]  # epochs/lr/head_lr -> how it was chosen

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.steps} optimizer steps ({self.epochs:g} epochs: {self.why['epochs']}), lr {self.lr:.3g} "
            f"({self.why['lr']}), head lr {self.head_lr:.3g} ({self.why['head_lr']})"
        )


def steps_per_epoch(n_rows: int, cfg: RunConfig, world: int) -> int:
    batches = math.ceil(n_rows / (cfg.train.batch_size * world))
    return max(1, batches // cfg.train.grad_accum)


def make_plan(n_rows: int, cfg: RunConfig, world: int = 1, head_init: str = "random") -> Plan:
    """The run's epochs, steps and learning rates for `n_rows` training rows on `world` processes."""
    spec, t = METHODS[cfg.method.name], cfg.train
    per_epoch = steps_per_epoch(n_rows, cfg, world)
    why: dict[str, str] = {}
    if t.max_steps > 0:
        steps, epochs = t.max_steps, t.max_steps / per_epoch
        why["epochs"] = "train.max_steps"
    elif t.epochs is not None:
        epochs = t.epochs
        steps = max(1, math.ceil(epochs * per_epoch))
        why["epochs"] = "train.epochs"
    else:
        epochs = float(min(MAX_AUTO_EPOCHS, max(1, math.ceil(MIN_STEPS / per_epoch))))
        steps = max(1, math.ceil(epochs * per_epoch))
        why["epochs"] = (
            "auto: 1 epoch"
            if epochs == 1
            else f"auto: {per_epoch} steps an epoch, at least {MIN_STEPS} steps"
        )
    if t.lr is not None:
        lr, why["lr"] = t.lr, "train.lr"
    else:
        scale = min(spec.max_lr_scale, max(1.0, math.sqrt(REFERENCE_STEPS / steps)))
        lr = spec.default_lr * scale
        why["lr"] = f"auto: {spec.name}'s {spec.default_lr:g}" + (
            f" x {scale:.2f} for a {steps}-step run" if scale > 1 else ""
        )
    if t.head_lr is not None:
        head_lr, why["head_lr"] = t.head_lr, "train.head_lr"
    elif head_init == "verbalizer":
        head_lr, why["head_lr"] = lr, "auto: the adapter's, the head starts from the label words"
    else:
        head_lr = max(lr, min(MAX_HEAD_LR, HEAD_LR_FACTOR * lr))
        why["head_lr"] = f"auto: {HEAD_LR_FACTOR:g} x lr, at most {MAX_HEAD_LR:g}"
    return Plan(epochs=float(epochs), steps=int(steps), lr=float(lr), head_lr=float(head_lr), why=why)


def checkpoint_dir(out: Path) -> Path:
    """Where Trainer keeps a run's checkpoints: beside its adapter folder, removed once the adapter is written."""
    return out.parent / f".{out.name}.{CHECKPOINTS}"


# What peftkit adds to Trainer's checkpoint: the best-epoch selection so far (evaluations, best weights).
SELECTION_STATE = "peftkit_selection.json"
SELECTION_WEIGHTS = "peftkit_selection.safetensors"
# Trainer writes trainer_state.json last: a checkpoint without it (or the weights) was cut short.
_CHECKPOINT_FILES = ("trainer_state.json", WEIGHTS, "optimizer.pt", "scheduler.pt")


def checkpoints(ckpt: Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in `ckpt`, newest (highest step) first."""
    if not ckpt.is_dir():
        return []
    found = [p for p in ckpt.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def damage(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a missing or unreadable file), or None when it is complete."""
    import json

    missing = [name for name in _CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        if (checkpoint / SELECTION_STATE).is_file():
            json.loads((checkpoint / SELECTION_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its state file is unreadable"
    return None


def last_checkpoint(ckpt: Path) -> Path | None:
    """The newest complete checkpoint in `ckpt`, the one ``--resume`` continues from; None when there is none.

    A newer checkpoint that a kill or a full disk cut short is skipped, with one line saying so.
    """
    import logging

    for checkpoint in checkpoints(ckpt):
        why = damage(checkpoint)
        if why is None:
            return checkpoint
        logging.getLogger("peftkit").warning(
            "checkpoint %s is incomplete (%s): skipped, --resume takes the one before it", checkpoint, why
        )
    return None
