"""``peftkit predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr

DataOpt = Annotated[str, typer.Option(help="Rows to answer: CSV, JSONL or Parquet.")]
AdapterOpt = Annotated[
    Optional[Path], typer.Option(help="Adapter folder written by `peftkit train` (or give --bank).")
]
BankOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Adapter bank written by `peftkit train --segment-column`: each row answered by its "
        "segment's adapter."
    ),
]
SegmentColumnOpt = Annotated[
    Optional[str],
    typer.Option(help="With --bank: the column naming each row's segment; default: the bank's own column."),
]
SegmentOpt = Annotated[
    Optional[str], typer.Option(help="With --bank: answer every row with this segment's adapter.")
]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option(help="Where to write predictions (.csv, .jsonl or .parquet); default: CSV on stdout."),
]
TextColumnOpt = Annotated[
    Optional[str], typer.Option(help="Text column; default: the one the adapter was trained on.")
]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option(help="Build the text from columns; default: the adapter's training template."),
]
BaseOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Base model; default: the one in the adapter's manifest (a different base is refused)."
    ),
]
QuantOpt = Annotated[
    Optional[str], typer.Option(help="none or 8bit; default: what the adapter was trained with.")
]
BatchSizeOpt = Annotated[int, typer.Option(help="Rows per forward pass.")]


@command
def predict(
    data: DataOpt,
    adapter: AdapterOpt = None,
    bank: BankOpt = None,
    segment_column: SegmentColumnOpt = None,
    segment: SegmentOpt = None,
    output: OutputOpt = None,
    text_column: TextColumnOpt = None,
    template: TemplateOpt = None,
    base: BaseOpt = None,
    quant: QuantOpt = None,
    batch_size: BatchSizeOpt = 64,
    json_: JsonFlag = False,
) -> None:
    """Answer every row of a file with one adapter, or with an adapter bank where each row goes to its segment's
    adapter. One output row per input row, in order: the input columns plus `prediction` (label, or score for
    regression), one `prob_<label>` per class and `adapter` (which adapter answered).

    Examples:

    ```
    peftkit predict --adapter runs/intent-adalora \\
        --data new.csv --output preds.csv
    peftkit predict --bank banks/reviews --data new.csv \\
        --segment-column platform --output preds.csv
    ```
    """
    from peftkit.data import check_writable
    from peftkit.errors import PeftkitError
    from peftkit.inference.table import TextSpec, predict_table, write_predictions

    if (adapter is None) == (bank is None):
        raise PeftkitError("give exactly one of --adapter (one adapter) or --bank (an adapter bank)")
    if adapter is not None and (segment_column or segment):
        raise PeftkitError("--segment-column and --segment need --bank; --adapter answers every row itself")
    if segment_column and segment:
        raise PeftkitError(
            "give --segment-column (a segment per row) or --segment (one for all rows), not both"
        )
    if quant not in (None, "none", "8bit"):
        raise PeftkitError(f"--quant {quant!r}: use none or 8bit")
    if output is not None:
        check_writable(output)
    with stdout_to_stderr():
        result = predict_table(
            data,
            adapter=adapter,
            bank=bank,
            segment_column=segment_column,
            segment=segment,
            text=TextSpec(text_column, template),
            base=base,
            quant=quant,
            batch_size=batch_size,
        )
    if output is None:
        typer.echo(result.frame.to_csv(index=False), nl=False)
        return
    summary = write_predictions(result, output)
    emit(summary, json_, lambda: typer.echo(f"wrote {summary['rows']} predictions to {output}"))
