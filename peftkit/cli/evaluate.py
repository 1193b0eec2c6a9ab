"""``peftkit evaluate``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.cli.predict import (
    AdapterOpt,
    BankOpt,
    BaseOpt,
    BatchSizeOpt,
    QuantOpt,
    QuestionsOpt,
    TemplateOpt,
    TextColumnOpt,
)

DataOpt = Annotated[
    str,
    typer.Option(
        help="Labelled rows to score: CSV, JSONL or Parquet, with the columns predict reads plus each question's "
        "label column. A row with an empty label is skipped and counted."
    ),
]
OutputOpt = Annotated[
    Path,
    typer.Option(
        help="Folder to create: metrics.json, predictions.csv (predict's columns beside each label) and the PNG "
        "plots. Written whole or not at all; a folder that holds files is refused without --overwrite."
    ),
]
LabelColumnOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        metavar="NAME|Q=NAME",
        help="The column holding the true labels; default: the one each adapter trained with (its peftkit.json, "
        "config.data.label_column). For a bank of questions, one per question: --label-column churn=churned "
        "(repeat it, or separate with commas); a plain NAME suits an adapter or a one-question bank.",
    ),
]
SegmentColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        help="The column naming each row's segment. With --bank it routes each row to its segment's adapter "
        "(default: each question's own column) and the figures are also given per value of it; with --adapter it "
        "only groups the figures (one adapter answers every row)."
    ),
]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an --output folder that already holds files.")]


@command
def evaluate(
    data: DataOpt,
    output: OutputOpt,
    adapter: AdapterOpt = None,
    bank: BankOpt = None,
    label_column: LabelColumnOpt = None,
    questions: QuestionsOpt = None,
    segment_column: SegmentColumnOpt = None,
    text_column: TextColumnOpt = None,
    template: TemplateOpt = None,
    base: BaseOpt = None,
    quant: QuantOpt = None,
    batch_size: BatchSizeOpt = 64,
    overwrite: OverwriteOpt = False,
    json_: JsonFlag = False,
) -> None:
    """Score a labelled file exactly as `peftkit predict` does (same texts, same fitted temperature and threshold) and
    measure the answers against the labels: per question, overall and per segment (each adapter that answered, and
    each value of the segment column). Classification: accuracy, macro-F1, per-class precision/recall/F1, AUC and
    PR-AUC and lift/capture at the top 10%/20% (two labels), ECE and Brier; ordinal adds MAE and Spearman;
    regression: MAE, RMSE, Spearman. Plots: confusion matrix, reliability diagram, cumulative gains. docs/evaluate.md
    explains every figure.

    Examples:

    ```
    peftkit evaluate --adapter runs/churn-lora \\
        --data holdout.csv --output eval/churn
    peftkit evaluate --bank banks/reviews --data labelled.csv \\
        --output eval/reviews --json > metrics.json
    peftkit evaluate --bank banks/shop --data users.csv \\
        --label-column intent=intent_label,churn=churned \\
        --output eval/shop --overwrite
    ```
    """
    from rich.console import Console

    from peftkit.evaluation import evaluate as run
    from peftkit.evaluation.report import print_report
    from peftkit.inference.table import TextSpec

    questions_list = [q.strip() for q in questions.split(",") if q.strip()] if questions else None
    with stdout_to_stderr():
        report = run(
            data, output=output, adapter=adapter, bank=bank, label_columns=label_column, questions=questions_list,
            segment_column=segment_column, text=TextSpec(text_column, template), base=base, quant=quant,
            batch_size=batch_size, overwrite=overwrite, command=_command_line(),
        )  # fmt: skip
    emit(report, json_, lambda: (print_report(report, Console()), typer.echo(f"wrote {output}")))


def _command_line() -> str:
    # Run as `peftkit evaluate ...` argv holds the subcommand; run otherwise (python -m, tests) it may not.
    args = sys.argv[1:]
    return "peftkit evaluate " + shlex.join(args[1:] if args[:1] == ["evaluate"] else args)
