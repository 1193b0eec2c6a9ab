"""``peftkit evaluate``: score a labelled file exactly as ``peftkit predict`` does, then measure the answers against the
labels, per question, overall and per segment, and write metrics.json, predictions.csv and the plots into one folder.

    report = evaluate("holdout.csv", bank=Path("banks/shop"), output=Path("eval/shop"))
    report["questions"]["churn"]["overall"]["macro_f1"]

Scoring is `peftkit.inference.table.predict_frame` (the same texts, masking and decisions: each adapter's fitted
temperature and threshold), so evaluate's labels and probabilities are predict's. Everything the task spec computes
comes from `Task.metrics` (the numbers training reports); `peftkit.evaluation.metrics` adds the per-class table and
lift/capture. Labels are checked before any model loads (`peftkit.evaluation.labels`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftkit.artifacts.io import atomic_folder, check_writable_path, write_json
from peftkit.artifacts.manifest import package_versions
from peftkit.data import read_table, write_table
from peftkit.errors import PeftkitError
from peftkit.evaluation import metrics as M
from peftkit.evaluation.labels import Target, Truth, adapter_targets, bank_targets, read_truth
from peftkit.evaluation.plots import write_plots
from peftkit.inference.bank import segment_of
from peftkit.inference.table import TextSpec, open_model, predict_frame

log = logging.getLogger("peftkit")
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.csv"
EMPTY_SEGMENT = (
    "(empty)"  # the name of the group of rows whose segment cell is empty (the fallback answered them)
)


def evaluate(
    data: str,
    *,
    output: Path,
    adapter: Path | None = None,
    bank: Path | None = None,
    label_columns: list[str] | None = None,
    questions: list[str] | None = None,
    segment_column: str | None = None,
    text: TextSpec = TextSpec(),
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Score `data` with `adapter` or `bank` as ``peftkit predict`` does and write the evaluation into `output`.

    Args:
        data: a labelled CSV, JSONL or Parquet file (or a packaged ``builtin:`` dataset).
        output: folder to create; refused when it holds files, unless `overwrite`. Written in a temporary sibling
            and renamed into place, so it is either complete or absent.
        label_columns: ``--label-column`` values: a column NAME (an adapter, a one-question bank) or ``q=COLUMN``
            per question; default: the column each adapter trained with.
        questions, segment_column, text, base, quant, batch_size: as for ``peftkit predict``.
        command: the command line, recorded in metrics.json.

    Returns:
        What metrics.json holds (docs/evaluate.md describes it).

    Raises:
        PeftkitError: an option, the output folder, the file, its label column or a label is wrong (nothing is
            written), or no labelled row could be answered.
    """
    if (adapter is None) == (bank is None):
        raise PeftkitError("give exactly one of --adapter (one adapter) or --bank (an adapter bank)")
    if adapter is not None and questions:
        raise PeftkitError("--questions needs --bank; an adapter answers one question")
    if quant not in (None, "none", "8bit"):
        raise PeftkitError(f"--quant {quant!r}: use none or 8bit")
    check_output(Path(output), overwrite)
    frame = read_table(data)
    targets = (
        adapter_targets(Path(adapter), label_columns, segment_column)
        if adapter is not None
        else bank_targets(Path(bank), label_columns, questions, segment_column)
    )
    truths = {t.name: labelled(frame, t, data) for t in targets}
    log.info("evaluate: scoring %d rows of %s", len(frame), data)
    model = open_model(adapter=adapter, bank=bank, base=base, quant=quant, batch_size=batch_size)
    # An adapter answers every row itself: its --segment-column only groups the figures.
    routing = segment_column if bank is not None else None
    answered = predict_frame(
        frame, model, source=data, questions=questions, segment_column=routing, text=text
    ).frame
    report: dict[str, Any] = {
        "data": str(data),
        ("adapter" if adapter is not None else "bank"): str(adapter if adapter is not None else bank),
        "rows": len(frame),
        "skipped": {},
        "questions": {t.name: question_report(t, truths[t.name], answered, data) for t in targets},
        "files": {"metrics": METRICS_FILE, "predictions": PREDICTIONS_FILE, "plots": {}},
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    for name, q in report["questions"].items():
        report["skipped"][name] = {k: v for k, v in q["rows"].items() if k != "scored"}
    with atomic_folder(Path(output)) as tmp:
        for t in targets:
            report["files"]["plots"][t.name] = _plots(tmp, t, truths[t.name], answered, report)
        write_table(with_truth(answered, targets, truths), tmp / PREDICTIONS_FILE)
        write_json(tmp / METRICS_FILE, report)
    return report


def labelled(frame: pd.DataFrame, t: Target, source: str) -> Truth:
    """`t`'s labels from `frame` (`read_truth`), refusing a column with no label at all."""
    truth = read_truth(frame, t, source, many=bool(t.prefix))
    if not truth.given.any():
        who = f"question {t.name!r}" if t.prefix else "the adapter"
        raise PeftkitError(
            f"{source}: column {t.label_column!r} is empty in every row; there is nothing to evaluate {who} on; "
            "fill it or name another with --label-column"
        )
    return truth


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --output that is a file, cannot be written, or holds files (without overwrite)."""
    check_writable_path(out, folder=True)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"--output {out} is not empty; pass --overwrite to replace it, or choose a new folder"
        )


def question_report(t: Target, truth: Truth, frame: pd.DataFrame, source: str) -> dict[str, Any]:
    """metrics.json's entry of one question: its rows, overall figures, per-class table, segments and lift."""
    answered = _answered(t, frame)
    scored = truth.given & answered
    rows = {
        "scored": int(scored.sum()),
        "empty_label": int((~truth.given).sum()),
        "unanswered": int((truth.given & ~answered).sum()),
    }
    if not rows["scored"]:
        raise PeftkitError(
            f"{source}: no labelled row could be answered for {t.name!r} ({rows['unanswered']} with errors: see "
            f"the {t.error_column} column of peftkit predict); fix those rows"
        )
    y, pred, out = _answers(t, truth, frame, scored)
    entry: dict[str, Any] = {
        "task": t.task.name,
        "labels": t.labels,
        "label_column": t.label_column,
        "primary": t.task.primary.name,
        "higher_is_better": t.task.primary.higher_is_better,
        "rows": rows,
        "overall": M.group_metrics(t.task, y, out),
    }
    if t.labels:
        entry["per_class"] = M.per_class(y, pred, t.labels)
    adapters = frame[t.adapter_column].to_numpy()[scored].astype(str)
    entry["segments"] = _groups(t, y, out, adapters)
    if t.segment_column is not None and t.segment_column in frame.columns:
        values = [
            segment_of({"v": v}, "v") or EMPTY_SEGMENT for v in frame[t.segment_column].to_numpy()[scored]
        ]
        entry["segment_values"] = {"column": t.segment_column, "values": _groups(t, y, out, np.array(values))}
    if t.positive is not None:
        entry["positive"] = t.labels[t.positive]
        entry["lift"] = M.lift(y == t.positive, out.probs[:, t.positive])
    return entry


def _answers(t: Target, truth: Truth, frame: pd.DataFrame, scored: np.ndarray):
    """(true values, predicted indices or scores, `Decoded`) of the scored rows, read from predict's columns."""
    y = truth.values[scored]
    answers = frame[t.answer].to_numpy()[scored]
    if not t.task.labelled:
        pred = answers.astype(np.float64)
        return y, pred, M.decoded(t.task, pred, None)
    index = {label: i for i, label in enumerate(t.labels)}
    pred = np.array([index[str(a)] for a in answers])
    probs = frame[t.prob_columns()].to_numpy(dtype=np.float64)[scored]
    return y.astype(int), pred, M.decoded(t.task, pred, probs)


def _groups(t: Target, y: np.ndarray, out, keys: np.ndarray) -> dict[str, dict[str, Any]]:
    """The spec's metrics per distinct key (rows in each group), groups in order of first appearance."""
    return {
        str(key): M.group_metrics(t.task, y[keys == key], M.subset(out, keys == key))
        for key in dict.fromkeys(keys.tolist())
    }


def _plots(folder: Path, t: Target, truth: Truth, frame: pd.DataFrame, report: dict) -> list[str]:
    y, pred, out = _answers(t, truth, frame, truth.given & _answered(t, frame))
    lift = report["questions"][t.name].get("lift")
    return write_plots(folder, t.name, y, pred, out.probs, t.positive, t.labels, lift)


def _answered(t: Target, frame: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the rows predict answered for `t` (an answer and no error)."""
    answered = frame[t.answer].notna().to_numpy()
    if t.error_column in frame.columns:
        answered &= frame[t.error_column].isna().to_numpy()
    return answered


def with_truth(frame: pd.DataFrame, targets: list[Target], truths: dict[str, Truth]) -> pd.DataFrame:
    """Predict's frame with each question's label as read (``true_label``, ``q_true_label``) before its answer."""
    frame = frame.copy()
    for t in targets:
        name = f"{t.prefix}true_label"
        values = [text if given else None for text, given in zip(truths[t.name].text, truths[t.name].given)]
        if name in frame.columns:
            frame = frame.drop(columns=[name])
        frame.insert(int(frame.columns.get_loc(t.answer)), name, values)
    return frame


def versions() -> dict[str, str]:
    """The package versions metrics.json records (peftkit's usual ones and scikit-learn, which computes them)."""
    from importlib.metadata import version

    return package_versions() | {"scikit-learn": version("scikit-learn")}
