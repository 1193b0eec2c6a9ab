"""Answering a table of rows (what ``peftkit predict`` does): each row's text built as the adapter was trained, each
row answered by one adapter, or by a bank (every question, each row by its segment's adapter), the answers added
beside the input columns.

    result = predict_table("records.csv", bank=Path("banks/shop"))
    write_predictions(result, Path("scores.csv"))

A row that cannot be answered (a template field with no value and no default, a segment with no adapter under
``fallback: error``) gets its error in an ``error`` column (``<question>_error`` for a bank of questions) and the
other rows are answered; only a file where no row could be answered at all is an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from peftkit.data import read_table, write_table
from peftkit.data.files import RowError, texts_or_errors
from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.inference.explain import ExplainOptions, Explanation


@dataclass
class TablePredictions:
    """The input rows plus the answer columns; rows per adapter that answered, and the rows no answer came for."""

    frame: pd.DataFrame
    answered_by: dict[str, int]
    failed_rows: int = 0
    # (row, question or None, why) per explained answer, when predict was asked to explain
    explanations: list[tuple[int, str | None, Explanation]] | None = None


@dataclass(frozen=True)
class TextSpec:
    """How to build each row's text: a column or a template; None for the adapter's training choice."""

    text_column: str | None = None
    template: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.text_column or self.template)

    def texts(self, frame: pd.DataFrame, data_cfg: dict[str, Any]) -> tuple[list, list[RowError | None]]:
        """One text (or error) per row: from the given column or template, else as the adapter's training data
        built it."""
        column = self.text_column or data_cfg.get("text_column", "text")
        return texts_or_errors(frame, text_column=column, template=self.template_for(data_cfg))

    def template_for(self, data_cfg: dict[str, Any]) -> str | None:
        """The template that builds each row's text (None: a text column does)."""
        return self.template if self.given else data_cfg.get("template")


def predict_table(
    data: str,
    *,
    adapter: Path | None = None,
    bank: Path | None = None,
    questions: list[str] | None = None,
    segment_column: str | None = None,
    segment: str | None = None,
    text: TextSpec = TextSpec(),
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
    explain: ExplainOptions | None = None,
) -> TablePredictions:
    """Every row of `data` answered by `adapter`, or by `bank` (every question, or those in `questions`; each row
    by its segment's adapter: from `segment_column`, default each question's own column, or `segment` for every
    row); with `explain`, each answer's explanation beside it (`peftkit.inference.explain.explanation_columns`).

    Raises:
        PeftkitError: the file cannot be read, an option does not fit the bank, or no row could be answered.
    """
    frame = read_table(data)
    model = open_model(adapter=adapter, bank=bank, base=base, quant=quant, batch_size=batch_size)
    result = predict_frame(
        frame,
        model,
        source=data,
        questions=questions,
        segment_column=segment_column,
        segment=segment,
        text=text,
        explain=explain,
    )
    if adapter is not None:  # the summary names the adapter as it was given
        result.answered_by = {str(adapter): sum(result.answered_by.values())}
    return result


def open_model(
    *,
    adapter: Path | None = None,
    bank: Path | None = None,
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
):
    """The `Predictor` of `adapter`, or the `AdapterBank` of `bank`: what `predict_frame` answers rows with (opened
    once, for many frames: a Ray Data actor keeps it)."""
    if bank is not None:
        from peftkit.inference.bank import AdapterBank

        return AdapterBank.open(bank, quant=quant, batch_size=batch_size)
    from peftkit.inference.predictor import load_predictor

    model = load_predictor(str(adapter), base=base, quant=quant)
    model.batch_size = batch_size
    return model


def predict_frame(
    frame: pd.DataFrame,
    model,
    *,
    source: str,
    questions: list[str] | None = None,
    segment_column: str | None = None,
    segment: str | None = None,
    text: TextSpec = TextSpec(),
    strict: bool = True,
    explain: ExplainOptions | None = None,
) -> TablePredictions:
    """`frame` with the answer columns of `model` (from `open_model`) added; see `predict_table`.

    ``strict``: a frame of which no row could be answered is an error (a whole file); without it (one batch of a
    larger job) its rows keep their errors.
    """
    from peftkit.inference.bank import AdapterBank

    explained: list | None = [] if explain is not None else None
    if isinstance(model, AdapterBank):
        columns, answered_by, failed = _predict_bank(
            model, frame, source, questions, segment_column, segment, text, strict, explain, explained
        )
    else:
        columns, answered_by, failed = _predict_adapter(model, frame, text, strict, explain, explained)
    frame = frame.copy()
    for name, values in columns.items():
        frame[name] = values
    return TablePredictions(frame, answered_by, failed, explained)


def write_predictions(result: TablePredictions, output: Path) -> dict[str, Any]:
    """Write the predictions (format by suffix, atomically); returns the summary: rows, who answered, label counts."""
    frame = result.frame
    write_table(frame, output)
    summary: dict[str, Any] = {"output": str(output), "rows": len(frame), "answered_by": result.answered_by}
    if result.failed_rows:
        summary["rows_with_errors"] = result.failed_rows
    if "prediction" in frame and "prob_" in "".join(frame.columns):
        summary["prediction_counts"] = {str(k): int(v) for k, v in frame["prediction"].value_counts().items()}
    return summary


def _predict_adapter(model, frame, text: TextSpec, strict: bool, explain=None, explained=None):
    from peftkit.inference.predictor import prediction_columns

    data_cfg = model.manifest.config["data"]
    texts, errors = text.texts(frame, data_cfg)
    good = _answerable(texts, errors, strict)
    answers = model.predict([texts[i] for i in good]) if good else []
    columns = prediction_columns(answers, model.labels)
    if explain is not None and good:
        from peftkit.inference.explain import explain_texts, explanation_columns, record_spans

        data = {**data_cfg, "template": text.template_for(data_cfg)}
        records = frame.iloc[good].to_dict("records")
        spans = [record_spans(r, data, texts[i]) for r, i in zip(records, good)]
        why = explain_texts(
            model, [texts[i] for i in good], top_k=explain.top_k, n_steps=explain.n_steps, spans=spans
        )
        columns.update(explanation_columns(why))
        explained.extend((i, None, e) for i, e in zip(good, why))
    columns = _spread(columns, good, len(texts))
    return _with_errors(columns, errors, "error"), {model.adapter: len(good)}, len(texts) - len(good)


def _predict_bank(
    bank,
    frame,
    source,
    questions,
    segment_column,
    segment,
    text: TextSpec,
    strict: bool,
    explain=None,
    explained=None,
):
    if text.given:  # one text for every row, given here: a one-question bank answers it as texts
        data_cfg = bank.bank.config.get("data", {})
        texts, errors = text.texts(frame, data_cfg)
        good = _answerable(texts, errors, strict)
        rows = frame.iloc[good]
        segments = (
            segment
            if segment is not None
            else _segments(rows, segment_column or bank.bank.segment_column, source)
        )
        columns = bank.predict_columns([texts[i] for i in good], segments)
        answered = dict(Counter(columns["adapter"]))
        if explain is not None and good:
            from peftkit.inference.explain import explain_question, explanation_columns, record_spans

            data = {**data_cfg, "template": text.template_for(data_cfg)}
            spans = [record_spans(r, data, texts[i]) for r, i in zip(rows.to_dict("records"), good)]
            why = explain_question(
                bank.question(), [texts[i] for i in good], columns["adapter"], explain, spans
            )
            columns.update(explanation_columns(why))
            explained.extend((i, None, e) for i, e in zip(good, why))
        return (
            _with_errors(_spread(columns, good, len(frame)), errors, "error"),
            answered,
            len(frame) - len(good),
        )
    names = bank.question_names(questions)
    if segment is None:
        for name in names:
            _segments(frame.iloc[:0], segment_column or bank.questions[name].segment_column, source)
    scores = bank.score(
        frame,
        names,
        segment_column=segment_column,
        segment=segment,
        explain=explain is not None,
        **({"top_k": explain.top_k, "n_steps": explain.n_steps} if explain is not None else {}),
    )
    if explain is not None:
        explained.extend(
            (i, None if bank.single else q, s.explanation)
            for i, record in enumerate(scores)
            for q, s in record.items()
            if s.explanation is not None
        )
    answered = Counter(
        f"{q}/{s.adapter}" if not bank.single else s.adapter
        for record in scores
        for q, s in record.items()
        if s.error is None
    )
    failed = sum(1 for record in scores if any(s.error for s in record.values()))
    if not answered and strict and scores:
        first = next(s for record in scores for s in record.values())
        raise PeftkitError(f"{source}: no row could be answered; row 1: {first.error}")
    if bank.single:  # a one-question bank writes the columns it always wrote
        question = names[0]
        columns = bank.score_columns(scores, names)
        renamed = {"prediction": columns.pop(question)}
        for key, values in columns.items():
            renamed[key.removeprefix(f"{question}_")] = values
        return renamed, dict(answered), failed
    return bank.score_columns(scores, names), dict(answered), failed


def _answerable(texts: list, errors: list[RowError | None], strict: bool = True) -> list[int]:
    good = [i for i, e in enumerate(errors) if e is None]
    if not good and strict and errors:
        first = next(e for e in errors if e is not None)
        raise PeftkitError(f"no row could be answered; row 1: {first.message}; {first.fix}")
    return good


def _spread(columns: dict[str, list], rows: list[int], n: int) -> dict[str, list]:
    """Columns of answers for `rows` as columns of `n` rows, empty where a row has no answer."""
    out = {}
    for name, values in columns.items():
        full: list = [None] * n
        for i, value in zip(rows, values):
            full[i] = value
        out[name] = full
    return out


def _with_errors(columns: dict[str, list], errors: list[RowError | None], name: str) -> dict[str, list]:
    if any(errors):
        columns[name] = [None if e is None else f"{e.message}; {e.fix}" for e in errors]
    return columns


def _segments(frame: pd.DataFrame, column: str | None, source: str) -> list[str]:
    """Each row's segment (an empty cell: "", which the fallback answers); a missing column is an error."""
    if column is None:
        return [None] * len(frame)
    if column not in frame.columns:
        raise PeftkitError(
            f"{source}: no segment column {column!r} (columns: {', '.join(map(str, frame.columns[:12]))}); "
            "pass --segment-column or --segment"
        )
    from peftkit.inference.bank import segment_of

    return [segment_of({column: v}, column) for v in frame[column].tolist()]  # empty cell: the fallback
