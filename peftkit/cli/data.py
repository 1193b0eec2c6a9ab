"""``peftkit data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit

app = typer.Typer(help="Data helpers: generate documented synthetic shopper records.", no_args_is_help=True)


@app.command("synth")
@command
def synth(
    task: Annotated[
        str,
        typer.Option(
            help="purchase_intent, purchasing_power, purchasing_power_score, value_segment, churn or conversion."
        ),
    ],
    rows: Annotated[int, typer.Option(help="Shoppers to generate.", min=1)] = 6000,
    seed: Annotated[int, typer.Option(help="Same task, rows and seed: the same file.")] = 0,
    output: Annotated[
        Optional[Path],
        typer.Option(help="CSV, JSONL or Parquet file; default data/synthetic_<task>_<rows>_s<seed>.csv."),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Write synthetic shopper records for a task that has no public labelled data: behaviour fields (recency,
    frequency, spend, sessions, cart adds, category mix, platform, device, tenure) and Chinese/English text (search
    query, chat line, review snippet) drawn from a documented latent model (docs/synthetic-data.md). Every row has
    `synthetic=True`; recipes can also read `builtin:synth/<task>` directly.

    ```
    peftkit data synth --task purchase_intent --rows 6000 --seed 0
    peftkit train --data data/synthetic_purchase_intent_6000_s0.csv --task ordinal \\
        --labels weak,medium,strong --template "{text}"
    ```
    """
    from peftkit.data import check_writable, write_table
    from peftkit.data.synth import SYNTH_TASKS, synthesize

    output = output or Path("data") / f"synthetic_{task}_{rows}_s{seed}.csv"
    check_writable(output)
    frame = synthesize(task, rows, seed)
    write_table(frame, output)
    spec = SYNTH_TASKS[task]
    counts = frame[spec.label_column].value_counts().to_dict() if spec.labels else None
    result = {
        "output": str(output),
        "task": task,
        "rows": len(frame),
        "seed": seed,
        "synthetic": True,
        "label_column": spec.label_column,
        "peftkit_task": spec.task,
        "labels": spec.labels,
        "label_counts": {str(k): int(v) for k, v in (counts or {}).items()},
    }
    emit(
        result,
        json_,
        lambda: typer.echo(
            f"wrote {len(frame):,} synthetic rows to {output} (label column {spec.label_column!r}, {spec.task})"
        ),
    )
