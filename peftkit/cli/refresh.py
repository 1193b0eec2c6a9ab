"""``peftkit refresh``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.cli.predict import QuestionsOpt
from peftkit.refresh.gate import DEFAULT_MARGIN

DataOpt = Annotated[
    str,
    typer.Option(
        help="New labelled rows (CSV, JSONL or Parquet) with the columns and label column the adapters read."
    ),
]
BankOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Bank to refresh: every question's adapters (global on every row, each segment on its rows)."
    ),
]
AdapterOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="One adapter to refresh instead of a bank; the candidate is written to --output if it passes."
    ),
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(help="With --adapter: the folder for the refreshed adapter (must not exist)."),
]
TimeColumnOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Column giving each row's time (a date or a number): the gate scores the newest --holdout share of "
        "rows, so it measures the next period; without it the held-out rows are a seeded random share."
    ),
]
HoldoutOpt = Annotated[float, typer.Option(help="Share of the new rows held out for the gate.")]
ReplayOpt = Annotated[
    Optional[Path],
    typer.Option(help="Older labelled rows to mix into each candidate's training (with --replay-share)."),
]
ReplayShareOpt = Annotated[
    float,
    typer.Option(
        help="Old rows added per new training row (0.3: 30 old for every 100 new), against forgetting."
    ),
]
MetricOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Metric the gate compares; default: the task's primary one (macro_f1 for classification, mae for "
        "ordinal and regression)."
    ),
]
MarginOpt = Annotated[
    float,
    typer.Option(
        help="Promote only when, with 95% confidence, the candidate loses at most this much of the metric to the "
        "adapter in production."
    ),
]
EpochsOpt = Annotated[
    Optional[float], typer.Option(help="Epochs for each candidate; default: the adapter's own training plan.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Train and report, promote nothing.")]
ReportOpt = Annotated[
    Optional[Path], typer.Option(help="Also write report.json and report.md into this new folder.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the random held-out cut and of the bootstrap.")]


@command
def refresh(
    data: DataOpt,
    bank: BankOpt = None,
    adapter: AdapterOpt = None,
    output: OutputOpt = None,
    questions: QuestionsOpt = None,
    time_column: TimeColumnOpt = None,
    holdout: HoldoutOpt = 0.2,
    replay: ReplayOpt = None,
    replay_share: ReplayShareOpt = 0.0,
    metric: MetricOpt = None,
    margin: MarginOpt = DEFAULT_MARGIN,
    epochs: EpochsOpt = None,
    dry_run: DryRunOpt = False,
    report: ReportOpt = None,
    seed: SeedOpt = 0,
    json_: JsonFlag = False,
) -> None:
    """Retrain adapters on new rows, each starting from the one in production, and promote a candidate only where
    the no-regression gate passes: both answer the same held-out rows, and the candidate must not lose more than
    --margin of the metric (95% paired bootstrap interval). A promoted candidate becomes the adapter's next version
    (`peftkit bank history`, `peftkit bank rollback` undoes it); a running `peftkit serve` picks it up.

    Examples:

    ```
    peftkit refresh --bank banks/shop --data march.csv --time-column order_date
    peftkit refresh --bank banks/shop --questions churn --data march.csv --dry-run --report reports/march
    peftkit refresh --adapter runs/churn-lora --data march.csv --output runs/churn-lora-march
    ```
    """
    from peftkit.artifacts.io import check_writable_path
    from peftkit.refresh.report import print_report, write_report
    from peftkit.refresh.run import refresh as run_refresh

    if report is not None:
        check_writable_path(report, folder=True, flag="--report")
    picked = [q.strip() for q in questions.split(",") if q.strip()] if questions else None
    with stdout_to_stderr():
        result = run_refresh(
            data, bank=bank, adapter=adapter, output=output, questions=picked, time_column=time_column,
            holdout=holdout, replay=replay, replay_share=replay_share, metric=metric, margin=margin,
            epochs=epochs, dry_run=dry_run, seed=seed,
        )  # fmt: skip
    if report is not None:
        write_report(result, report)
    emit(result.to_json(), json_, lambda: print_report(result))
