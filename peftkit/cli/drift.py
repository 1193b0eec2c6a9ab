"""``peftkit drift``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.cli.predict import AdapterOpt, BankOpt, BaseOpt, BatchSizeOpt, QuantOpt, QuestionsOpt

DRIFT_FOUND = 3  # the exit status when --fail-on is given and drift of that level or worse was found


class FailOn(str, Enum):
    never = "never"
    moderate = "moderate"
    major = "major"


DataOpt = Annotated[
    str, typer.Option(help="Recent rows: CSV, JSONL or Parquet, with the columns the adapters read.")
]
SegmentColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        help="With --bank: the column naming each row's segment; default: each question's own column."
    ),
]
NoScoresOpt = Annotated[
    bool,
    typer.Option(
        "--no-scores", help="Compare the fields only; skip scoring the rows (no model is loaded: fast)."
    ),
]
FailOnOpt = Annotated[
    FailOn,
    typer.Option(
        help=f"Exit with status {DRIFT_FOUND} when drift of this level or worse is found; default: exit 0."
    ),
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(help="Also write the report: .md (a Markdown page) or .json (the full dict)."),
]


@command
def drift(
    data: DataOpt,
    adapter: AdapterOpt = None,
    bank: BankOpt = None,
    questions: QuestionsOpt = None,
    segment_column: SegmentColumnOpt = None,
    no_scores: NoScoresOpt = False,
    fail_on: FailOnOpt = FailOn.never,
    output: OutputOpt = None,
    base: BaseOpt = None,
    quant: QuantOpt = None,
    batch_size: BatchSizeOpt = 64,
    json_: JsonFlag = False,
) -> None:
    """Tell how far recent rows have moved from what an adapter (or each adapter of a bank, per question and segment)
    was trained on: the population stability index (PSI) of every field it reads against its training rows, and of
    its scores and predicted labels against its held-out rows (rows scored as `peftkit predict` scores them).
    PSI >= 0.1 is flagged moderate, >= 0.25 major (docs/drift.md).

    Examples:

    ```
    peftkit drift --adapter runs/churn-lora --data may.csv
    peftkit drift --bank banks/shop --data may.csv --no-scores --output drift.md
    peftkit drift --bank banks/shop --questions churn --data may.csv --fail-on major
    ```
    """
    from rich.console import Console

    from peftkit.evaluation.drift import drift_report
    from peftkit.evaluation.drift_render import print_drift, write_drift

    if output is not None:
        write_drift(None, output)  # refuses an unknown suffix before any work
    picked = [q.strip() for q in questions.split(",") if q.strip()] if questions else None
    with stdout_to_stderr():
        report = drift_report(
            data, adapter=adapter, bank=bank, questions=picked, segment_column=segment_column,
            scores=not no_scores, base=base, quant=quant, batch_size=batch_size,
        )  # fmt: skip
    if output is not None:
        write_drift(report, output)
    emit(report, json_, lambda: print_drift(report, Console()))
    levels = {FailOn.moderate: ("moderate", "major"), FailOn.major: ("major",)}.get(fail_on, ())
    if report["worst"] in levels:
        raise typer.Exit(DRIFT_FOUND)
