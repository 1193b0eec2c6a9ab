"""``peftkit predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr


@command
def predict(
    adapter: Annotated[Path, typer.Option(help="Adapter folder written by `peftkit train`.")],
    data: Annotated[str, typer.Option(help="Rows to answer: CSV, JSONL or Parquet.")],
    output: Annotated[
        Optional[Path],
        typer.Option(help="Where to write predictions (.csv, .jsonl or .parquet); default: CSV on stdout."),
    ] = None,
    text_column: Annotated[
        Optional[str], typer.Option(help="Text column; default: the one the adapter was trained on.")
    ] = None,
    template: Annotated[
        Optional[str],
        typer.Option(help="Build the text from columns; default: the adapter's training template."),
    ] = None,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model; default: the one in the adapter's manifest (a different base is refused)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 64,
    json_: JsonFlag = False,
) -> None:
    """Answer every row of a file with one adapter: one output row per input row, in order, with the input
    columns plus `prediction` (label, or score for regression), one `prob_<label>` per class and `adapter`.

    Example:

    ```
    peftkit predict --adapter runs/intent-adalora \\
        --data new.csv --output preds.csv
    ```
    """
    import peftkit
    from peftkit.data import build_texts, check_writable, read_table, write_table

    if output is not None:
        check_writable(output)
    with stdout_to_stderr():
        model = peftkit.load(str(adapter), base=base)
        model.batch_size = batch_size
        frame = read_table(data)
        cfg = model.manifest["config"]["data"]
        use_template = template if (template or text_column) else cfg["template"]
        texts = build_texts(
            frame, text_column=text_column or cfg["text_column"], template=use_template, source=data
        )
        for name, values in model.predict_columns(texts).items():
            frame[name] = values
    if output is None:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    write_table(frame, output)
    summary = {"output": str(output), "rows": len(frame), "adapter": str(adapter)}
    if "prediction" in frame and model.labels:
        summary["prediction_counts"] = {str(k): int(v) for k, v in frame["prediction"].value_counts().items()}
    emit(summary, json_, lambda: typer.echo(f"wrote {len(frame)} predictions to {output}"))
