"""``peftkit doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.cli.options import (
    BatchSizeOpt,
    DataOpt,
    EpochsOpt,
    EvalDataOpt,
    FallbackOpt,
    LabelColumnOpt,
    LabelsOpt,
    LrOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    MethodOpt,
    MinSegmentRowsOpt,
    ModelOpt,
    QuantOpt,
    RecipeOpt,
    ReportToOpt,
    SeedOpt,
    SegmentColumnOpt,
    SetOpt,
    TaskOpt,
    TemplateOpt,
    TextColumnOpt,
    WarmStartOpt,
    recipe_or_default,
    run_config,
)

_STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


# This command's own flags; the shared ones are in peftkit.cli.options.
_OutputOpt = Annotated[
    Optional[Path],
    typer.Option(help="Adapter folder the run would write; default runs/<data>-<model>-<method>."),
]
_OverwriteOpt = Annotated[
    bool, typer.Option(help="The run would replace an existing, different adapter in --output.")
]
_ResumeOpt = Annotated[
    bool, typer.Option(help="The run would continue an interrupted run: check that a checkpoint exists.")
]


@command
def doctor(
    recipe: RecipeOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    text_column: TextColumnOpt = None,
    template: TemplateOpt = None,
    label_column: LabelColumnOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
    quant: QuantOpt = None,
    output: _OutputOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    max_length: MaxLengthOpt = None,
    report_to: ReportToOpt = None,
    segment_column: SegmentColumnOpt = None,
    min_segment_rows: MinSegmentRowsOpt = None,
    warm_start: WarmStartOpt = None,
    fallback: FallbackOpt = None,
    set_: SetOpt = None,
    overwrite: _OverwriteOpt = False,
    resume: _ResumeOpt = False,
    json_: JsonFlag = False,
) -> None:
    """Check the environment and a run before starting it: package versions, device and 8-bit support, disk space
    and the output folder, the base model (from its files, without loading weights), the method on that
    architecture, AdaLoRA's schedule, the data and its labels, and the segment column. Takes the same flags as
    `peftkit train`, so put `doctor` in place of `train` to check that exact run. One row per check (ok, warn or
    fail, with what to do); exits 1 when any check fails, 0 otherwise.

    Examples:

    ```
    peftkit doctor                 # the default recipe, as `peftkit train` would run it
    peftkit doctor --model smollm2-135m --method adalora --quant 8bit \\
        --data reviews.csv --text-column text --label-column label \\
        --output runs/intent-adalora
    peftkit doctor --recipe reviews/minilm-l6_lora_by-platform --json
    ```
    """
    from peftkit.doctor import has_failures, run_checks
    from peftkit.errors import PeftkitError

    try:
        cfg = run_config(locals())
    except PeftkitError as exc:  # a bad recipe or flag is one failed row among the others, not the end
        cfg = exc
    source = recipe_or_default(recipe, data) or "flags"
    with stdout_to_stderr():  # data and model libraries may print; stdout is for the report
        checks = run_checks(cfg, overwrite=overwrite, resume=resume, source=source)
    emit([c.to_dict() for c in checks], json_, lambda: _print(checks))
    if has_failures(checks):
        raise typer.Exit(1)


def _print(checks) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="peftkit doctor", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")  # fold, not truncate: paths and messages must stay whole
    table.add_column("fix", overflow="fold")
    for c in checks:
        style = _STYLES[c.status]
        table.add_row(c.name, f"[{style}]{c.status}[/{style}]", escape(c.detail), escape(c.fix))
    console = Console()
    console.print(table)
    counts = {s: sum(c.status == s for c in checks) for s in _STYLES}
    verdict = (
        "fix the failed rows before `peftkit train`"
        if counts["fail"]
        else "ready to train" + (" (read the warnings first)" if counts["warn"] else "")
    )
    console.print(
        f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail: {verdict}",
        markup=False,
        highlight=False,
    )
