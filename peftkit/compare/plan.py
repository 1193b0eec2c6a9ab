"""What a compare runs: one recipe's data and budget, crossed with methods x quantisations x seeds, plus baselines.

The plan is written to ``<output>/compare.json`` before the first run. A later ``peftkit compare`` with the same
output folder resumes: it refuses a plan whose data, split, model, budget or method settings differ (the runs would not be
comparable) and accepts more methods, quantisations or seeds (new runs are added, finished ones are kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from peftkit.artifacts.names import COMPARE_PLAN
from peftkit.config import RunConfig
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS

# Rows that are not peftkit: what users would otherwise write, trained on the same rows with the same budget.
BASELINES = {
    "peft+trainer": "plain peft LoRA (r=8, alpha=16) + HF Trainer with the docs' defaults: dynamic padding, "
    "random batch order, same epochs, batch size and lr as peftkit's LoRA row",
    "tutorial": "classic full fine-tuning tutorial: every weight trains, every row cut at the recipe's max_length "
    "and padded to 128 tokens, random batch order, lr 5e-5",
}


@dataclass(frozen=True)
class RunKey:
    """One cell of the comparison: a method (or baseline) at one quantisation and seed."""

    method: str
    quant: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method.replace('+', '-')}_{self.quant}_seed{self.seed}"

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES


class ComparePlan(BaseModel):
    """A comparison: the recipe's resolved config (data, model, budget) and the grid to run over it."""

    recipe: str = Field(description="the recipe as given (name or path)")
    config: dict[str, Any] = Field(description="the recipe's resolved config; method and seed vary per run")
    methods: list[str]
    quants: list[str]
    seeds: list[int]
    baselines: bool = True
    segment_column: str | None = None

    def runs(self) -> tuple[list[RunKey], list[str]]:
        """The runs to make, in order (seed-major: a partial compare already covers every method), and a note for
        each combination that cannot run."""
        runs, skipped = [], []
        extra = list(BASELINES) if self.baselines else []
        for seed in self.seeds:
            for quant in self.quants:
                for method in self.methods + (extra if quant == "none" else []):
                    note = self._cannot_run(method, quant)
                    if note is None:
                        runs.append(RunKey(method, quant, seed))
                    elif note not in skipped:
                        skipped.append(note)
        return runs, skipped

    def _cannot_run(self, method: str, quant: str) -> str | None:
        spec = METHODS.get(method)
        if spec is None:  # a baseline
            return None
        if spec.full_model and quant == "8bit":
            return "full x 8bit: int8 weights take no gradient (full fine-tuning needs --quant none)"
        if self.config["train"].get("gradient_checkpointing") and not spec.supports_gradient_checkpointing:
            return f"{method}: does not work with train.gradient_checkpointing=true"
        return None

    def run_config(self, key: RunKey) -> RunConfig:
        """The config one peftkit run trains with: the recipe's, with this method, quantisation and seed.

        The recipe's method options and learning rate belong to its own method; another method gets its defaults
        (learning rates differ by orders of magnitude between LoRA and full fine-tuning).
        """
        raw = json.loads(json.dumps(self.config))
        own = raw["method"]["name"] == key.method
        if not own:
            raw["method"] = {"name": key.method}
            raw["train"]["lr"] = None
        raw["model"]["quant"] = key.quant
        raw["train"]["seed"] = key.seed
        raw["segments"] = None
        try:
            return RunConfig.model_validate(raw)
        except ValueError as exc:  # pydantic's ValidationError: one line naming the run, not a traceback
            first = str(exc).splitlines()
            raise PeftkitError(f"{key.id}: {first[-1].strip() if first else exc}") from None

    def comparable_part(self) -> dict[str, Any]:
        """What every run must share for the comparison to hold: data, model, budget, the split seed (the recipe's
        ``train.seed``: it picks the held-out and the training rows) and the recipe's method options and learning
        rate (a resumed run is reused as is, so it must have been trained with them). Only the quantisation, the
        grid and where output goes may change between compares into one folder."""
        raw = json.loads(json.dumps(self.config))
        raw.pop("output", None)
        raw.pop("segments", None)
        raw["model"].pop("quant", None)
        for key in ("report_to", "logging_steps", "save_steps"):
            raw["train"].pop(key, None)
        return {"config": raw, "segment_column": self.segment_column}


def check_methods(methods: list[str]) -> None:
    """Refuse any name in `methods` that is not a peftkit method."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise PeftkitError(
            f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)} "
            f"(the baselines {', '.join(BASELINES)} are added by --baselines)"
        )


def write_or_check_plan(plan: ComparePlan, output: Path) -> ComparePlan:
    """Store the plan, or check it against the one stored by an earlier compare into the same folder.

    Returns the stored plan: the earlier grid widened by this one (methods, quantisations, seeds only grow), a
    record of everything the folder may hold.
    """
    from peftkit.artifacts.adapter_folder import diff_keys
    from peftkit.artifacts.io import write_json

    path = output / COMPARE_PLAN
    if path.is_file():
        stored = read_plan(output)
        before, now = stored.comparable_part(), plan.comparable_part()
        if before != now:
            changed = ", ".join(sorted(diff_keys(before, now))[:6])
            raise PeftkitError(
                f"{output} holds a compare with other data, split, model, budget or method settings (changed: {changed}); "
                "use a new --output, or the same settings to resume"
            )
        plan = plan.model_copy(
            update={
                "methods": _union(stored.methods, plan.methods),
                "quants": _union(stored.quants, plan.quants),
                "seeds": _union(stored.seeds, plan.seeds),
                "baselines": stored.baselines or plan.baselines,
            }
        )
    output.mkdir(parents=True, exist_ok=True)
    write_json(path, plan.model_dump(mode="json"))
    return plan


def read_plan(output: Path) -> ComparePlan:
    """The plan stored in the compare folder `output`."""
    path = output / COMPARE_PLAN
    if not path.is_file():
        raise PeftkitError(f"{output}: no {COMPARE_PLAN}; is this a peftkit compare --output folder?")
    try:
        return ComparePlan.model_validate_json(path.read_text())
    except ValueError as exc:
        raise PeftkitError(f"{path}: not a compare plan ({str(exc).splitlines()[0]})") from None


def _union(a: list, b: list) -> list:
    return a + [x for x in b if x not in a]
