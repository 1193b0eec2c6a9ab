"""``peftkit predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr


@command
def predict(
    data: Annotated[str, typer.Option(help="Rows to answer: CSV, JSONL or Parquet.")],
    adapter: Annotated[
        Optional[Path], typer.Option(help="Adapter folder written by `peftkit train` (or give --bank).")
    ] = None,
    bank: Annotated[
        Optional[Path],
        typer.Option(
            help="Adapter bank written by `peftkit train --segment-column`: each row answered by its "
            "segment's adapter."
        ),
    ] = None,
    segment_column: Annotated[
        Optional[str],
        typer.Option(
            help="With --bank: the column naming each row's segment; default: the bank's own column."
        ),
    ] = None,
    segment: Annotated[
        Optional[str], typer.Option(help="With --bank: answer every row with this segment's adapter.")
    ] = None,
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
    quant: Annotated[
        Optional[str], typer.Option(help="none or 8bit; default: what the adapter was trained with.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 64,
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
    from peftkit.data import check_writable, read_table, write_table
    from peftkit.errors import PeftkitError

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
        frame = read_table(data)
        if bank is not None:
            columns, answered_by = _predict_bank(
                bank, frame, data, segment_column, segment, text_column, template, quant, batch_size
            )
        else:
            columns, answered_by = _predict_adapter(
                adapter, frame, data, text_column, template, base, quant, batch_size
            )
        for name, values in columns.items():
            frame[name] = values
    if output is None:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    write_table(frame, output)
    summary = {"output": str(output), "rows": len(frame), "answered_by": answered_by}
    if "prediction" in frame and "prob_" in "".join(frame.columns):
        summary["prediction_counts"] = {str(k): int(v) for k, v in frame["prediction"].value_counts().items()}
    emit(summary, json_, lambda: typer.echo(f"wrote {len(frame)} predictions to {output}"))


def _texts(frame, data_cfg: dict, text_column, template, source: str) -> list[str]:
    from peftkit.data import build_texts

    use_template = template if (template or text_column) else data_cfg["template"]
    return build_texts(
        frame, text_column=text_column or data_cfg["text_column"], template=use_template, source=source
    )


def _predict_adapter(adapter, frame, source, text_column, template, base, quant, batch_size):
    import peftkit

    model = peftkit.load(str(adapter), base=base, quant=quant)
    model.batch_size = batch_size
    texts = _texts(frame, model.manifest.config["data"], text_column, template, source)
    return model.predict_columns(texts), {str(adapter): len(texts)}


def _predict_bank(folder, frame, source, segment_column, segment, text_column, template, quant, batch_size):
    from collections import Counter

    from peftkit.errors import PeftkitError
    from peftkit.inference.bank import AdapterBank

    bank = AdapterBank.open(folder, quant=quant, batch_size=batch_size)
    texts = _texts(frame, bank.bank.config["data"], text_column, template, source)
    if segment is not None:
        segments = segment
    else:
        column = segment_column or bank.bank.segment_column
        if column not in frame.columns:
            raise PeftkitError(
                f"{source}: no segment column {column!r} (columns: {', '.join(map(str, frame.columns[:12]))}); "
                "pass --segment-column or --segment"
            )
        segments = ["" if v != v else str(v) for v in frame[column].tolist()]  # empty cell: the fallback
    columns = bank.predict_columns(texts, segments)
    return columns, dict(Counter(columns["adapter"]))
