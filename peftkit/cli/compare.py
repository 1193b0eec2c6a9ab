"""``peftkit compare``."""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer

from peftkit.cli.common import JsonFlag, command, emit
from peftkit.cli.options import EpochsOpt, MaxStepsOpt, ModelOpt, RecipeOpt, SetOpt, run_overrides
from peftkit.config import Quant

_MethodsOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated methods: lora, adalora, prefix, bottleneck, and full (full fine-tuning, the "
        "reference). The recipe's method keeps its options and lr; the others get their defaults."
    ),
]

_QuantsOpt = Annotated[
    str, typer.Option(help="Comma-separated quantisations of the base: none, 8bit (full skips 8bit).")
]

_SeedsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Seeds per (method, quant): the recipe's seed, +1, +2... They change the head's init and the "
        "data order; the split stays the recipe's, so every run reads the same rows.",
    ),
]

_OutputOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Folder for the runs and report; default results/<recipe>. Re-running with the same settings "
        "resumes: finished runs are kept, and more methods/quants/seeds add runs."
    ),
]

_ResultsOpt = Annotated[
    Optional[Path],
    typer.Option(help="Only re-render the report (table, report.md, report.json, charts/) from this folder."),
]

_BaselinesOpt = Annotated[
    bool,
    typer.Option(
        help="Add the hand-written rows: peft+trainer (plain peft LoRA + HF Trainer) and tutorial (full "
        "fine-tuning, rows padded to 128), quant none, classification recipes only."
    ),
]

_SegmentColumnOpt = Annotated[
    Optional[str],
    typer.Option(help="Also score every run per value of this column of the held-out rows (e.g. platform)."),
]

_MaxTrainRowsOpt = Annotated[
    Optional[int], typer.Option(help="Seeded subset of the training rows (same subset for every run).")
]


@command
def compare(
    recipe: RecipeOpt = None,
    methods: _MethodsOpt = "lora,adalora,prefix,bottleneck,full",
    quant: _QuantsOpt = "none",
    seeds: _SeedsOpt = 3,
    output: _OutputOpt = None,
    results: _ResultsOpt = None,
    baselines: _BaselinesOpt = True,
    segment_column: _SegmentColumnOpt = None,
    model: ModelOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    max_train_rows: _MaxTrainRowsOpt = None,
    set_: SetOpt = None,
    json_: JsonFlag = False,
) -> None:
    """Train every method on the same rows and budget over several seeds, each run in its own process, and report
    quality (mean and 95% CI over seeds; per segment with --segment-column), trainable parameters, folder size,
    peak memory, training samples/s and real tokens/s, FLOP/s against the device's measured matmul peak, inference
    latency and throughput. Writes one JSON per run (never overwritten), report.md, report.json and charts/*.png,
    and prints the ranked table with a one-line recommendation. See docs/compare.md.

    Examples:

    ```
    peftkit compare --recipe reviews/minilm-l6_lora --seeds 3 \\
        --output results/reviews
    peftkit compare --recipe reviews/smollm2-135m_lora \\
        --methods lora,full --quant none,8bit --seeds 2
    peftkit compare --results results/reviews     # re-render only
    ```
    """
    from peftkit.artifacts.names import REPORT_MD
    from peftkit.compare import CompareInterrupted, compare_recipe, render

    console, shown = _consoles(json_)
    if results is not None:
        data = render(results, console=shown)
        emit(data, json_, lambda: typer.echo(f"report: {results / REPORT_MD}"))
        return
    overrides = run_overrides(model=model, epochs=epochs, max_steps=max_steps, set_=set_)
    if max_train_rows is not None:
        overrides["data.max_train_rows"] = max_train_rows
    request = _request(recipe, methods, quant, seeds, output, baselines, segment_column, overrides)
    say = functools.partial(console.print, highlight=False, markup=False)
    try:
        data = compare_recipe(request, say=say, commands=[_command_line()], console=shown)
    except CompareInterrupted as stop:
        typer.echo(f"interrupted; finished runs are kept in {stop.runs}: the same command resumes", err=True)
        raise typer.Exit(130) from None
    emit(data, json_, lambda: typer.echo(f"report: {request.folder / REPORT_MD}"))


def _consoles(json_: bool):
    """(console for progress on stderr, console the table is printed on: None with --json)."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or CI: rich would wrap the table at 80 columns
        console = Console(stderr=True, width=150)
    return console, None if json_ else console


def _request(
    recipe, methods: str, quant: str, seeds: int, output, baselines: bool, segment_column, overrides
):
    from peftkit.compare import CompareRequest, check_methods

    method_list = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))  # lora,lora: once
    check_methods(method_list)
    return CompareRequest(
        recipe=recipe or "reviews/minilm-l6_lora",
        methods=method_list,
        quants=_quants(quant),
        seeds=seeds,
        overrides=overrides,
        baselines=baselines,
        segment_column=segment_column,
        output=output,
    )


def _quants(text: str) -> list[str]:
    quants = list(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    bad = [q for q in quants if q not in get_args(Quant)]
    if bad or not quants:
        raise typer.BadParameter(
            f"unknown {', '.join(bad) or 'empty list'}; use none, 8bit or none,8bit", param_hint="--quant"
        )
    return quants


def _command_line() -> str:
    # Run as `peftkit compare ...` argv holds the subcommand; run as `python -m peftkit.cli.compare` it does not.
    args = sys.argv[1:]
    if args[:1] == ["compare"]:
        args = args[1:]
    return "peftkit compare " + " ".join(shlex.quote(a) for a in args)
