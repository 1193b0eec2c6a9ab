"""Answering a table of rows (what ``peftkit predict`` does): each row's text built as the adapter was trained, each
row answered by one adapter or by its segment's adapter in a bank, the answers added beside the input columns.

    result = predict_table("new.csv", bank=Path("banks/reviews"))
    write_predictions(result, Path("preds.csv"))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from peftkit.data import build_texts, read_table, write_table
from peftkit.errors import PeftkitError


@dataclass
class TablePredictions:
    """The input rows plus ``prediction``, one ``prob_<label>`` per class and ``adapter``; rows per adapter."""

    frame: pd.DataFrame
    answered_by: dict[str, int]


@dataclass(frozen=True)
class TextSpec:
    """How to build each row's text: a column or a template; None for the adapter's training choice."""

    text_column: str | None = None
    template: str | None = None

    def texts(self, frame: pd.DataFrame, data_cfg: dict[str, Any], source: str) -> list[str]:
        """One text per row: from the given column or template, else as the adapter's training data built it."""
        use_template = self.template if (self.template or self.text_column) else data_cfg["template"]
        column = self.text_column or data_cfg["text_column"]
        return build_texts(frame, text_column=column, template=use_template, source=source)


def predict_table(
    data: str,
    *,
    adapter: Path | None = None,
    bank: Path | None = None,
    segment_column: str | None = None,
    segment: str | None = None,
    text: TextSpec = TextSpec(),
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
) -> TablePredictions:
    """Every row of `data` answered by `adapter`, or by `bank` (each row by its segment's adapter: from
    `segment_column`, default the bank's own column, or `segment` for every row)."""
    frame = read_table(data)
    if bank is not None:
        columns, answered_by = _predict_bank(
            bank, frame, data, segment_column, segment, text, quant, batch_size
        )
    else:
        columns, answered_by = _predict_adapter(adapter, frame, data, text, base, quant, batch_size)
    for name, values in columns.items():
        frame[name] = values
    return TablePredictions(frame, answered_by)


def write_predictions(result: TablePredictions, output: Path) -> dict[str, Any]:
    """Write the predictions (format by suffix, atomically); returns the summary: rows, who answered, label counts."""
    frame = result.frame
    write_table(frame, output)
    summary: dict[str, Any] = {"output": str(output), "rows": len(frame), "answered_by": result.answered_by}
    if "prediction" in frame and "prob_" in "".join(frame.columns):
        summary["prediction_counts"] = {str(k): int(v) for k, v in frame["prediction"].value_counts().items()}
    return summary


def _predict_adapter(adapter, frame, source, text: TextSpec, base, quant, batch_size):
    from peftkit.inference.predictor import load_predictor

    model = load_predictor(str(adapter), base=base, quant=quant)
    model.batch_size = batch_size
    texts = text.texts(frame, model.manifest.config["data"], source)
    return model.predict_columns(texts), {str(adapter): len(texts)}


def _predict_bank(folder, frame, source, segment_column, segment, text: TextSpec, quant, batch_size):
    from peftkit.inference.bank import AdapterBank

    bank = AdapterBank.open(folder, quant=quant, batch_size=batch_size)
    texts = text.texts(frame, bank.bank.config["data"], source)
    segments = (
        segment
        if segment is not None
        else _segments(frame, segment_column or bank.bank.segment_column, source)
    )
    columns = bank.predict_columns(texts, segments)
    return columns, dict(Counter(columns["adapter"]))


def _segments(frame: pd.DataFrame, column: str | None, source: str) -> list[str]:
    if column not in frame.columns:
        raise PeftkitError(
            f"{source}: no segment column {column!r} (columns: {', '.join(map(str, frame.columns[:12]))}); "
            "pass --segment-column or --segment"
        )
    return ["" if v != v else str(v) for v in frame[column].tolist()]  # empty cell: the fallback
