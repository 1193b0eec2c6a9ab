"""A compare as ``peftkit compare`` asks for it: a recipe with overrides and the grid to run over it, from plan to
report in one call (`compare_recipe`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftkit.artifacts.names import COMPARE_RUNS
from peftkit.compare.plan import ComparePlan
from peftkit.compare.report_files import render
from peftkit.compare.runner import run_compare
from peftkit.errors import PeftkitError


@dataclass
class CompareRequest:
    """The recipe, its config overrides, and the methods, quantisations and number of seeds to run over it."""

    recipe: str
    methods: list[str]
    quants: list[str]
    seeds: int
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # dotted keys, as `peftkit.config.load_config` takes
    baselines: bool = True
    segment_column: str | None = None
    output: Path | None = None

    @property
    def folder(self) -> Path:
        """Where the runs and report go: `output`, or ``results/<recipe>``."""
        return self.output or Path("results") / self.recipe.removesuffix(".yaml").replace("/", "_")


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C while the runs were made; the finished ones are kept in `runs`, and the same compare resumes."""

    def __init__(self, runs: Path):
        super().__init__()
        self.runs = runs


def compare_recipe(
    request: CompareRequest,
    *,
    say: Callable[[str], None] = print,
    commands: list[str] | None = None,
    console=None,
) -> dict[str, Any]:
    """Make the runs `request` asks for that its folder does not hold yet, then write the report; returns it.

    `say` gets the progress lines, `commands` go to the folder's command history, and `console` (rich), when
    given, gets the ranked table. Raises `CompareInterrupted` on Ctrl-C during the runs.
    """
    plan = plan_for(request, say)
    out = request.folder
    try:
        run_compare(plan, out, say=say)
    except KeyboardInterrupt:
        raise CompareInterrupted(out / COMPARE_RUNS) from None
    return render(out, commands=commands, console=console)


def plan_for(request: CompareRequest, say: Callable[[str], None] = print) -> ComparePlan:
    """The recipe's resolved config crossed with the request's grid; baselines only for classification recipes."""
    from peftkit.config import load_config
    from peftkit.recipes import recipe_path

    cfg = load_config(recipe_path(request.recipe), request.overrides)
    if request.segment_column is not None:
        check_segment_column(cfg, request.segment_column)
    if request.baselines and cfg.task != "classification":
        say(f"baselines skipped: transformers' built-in head trains classification only, not {cfg.task}")
    return ComparePlan(
        recipe=request.recipe,
        config=cfg.model_dump(mode="json"),
        methods=request.methods,
        quants=request.quants,
        seeds=[cfg.train.seed + i for i in range(request.seeds)],
        baselines=request.baselines and cfg.task == "classification",
        segment_column=request.segment_column,
    )


def check_segment_column(cfg, column: str) -> None:
    """Refuse a segment column that the recipe's rows do not have."""
    from peftkit.data import load_splits

    frame = load_splits(cfg.data, cfg.task, cfg.train.seed).eval_frame
    if column not in frame.columns:
        raise PeftkitError(
            f"--segment-column {column}: the rows of {cfg.data.train} have no such column; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
