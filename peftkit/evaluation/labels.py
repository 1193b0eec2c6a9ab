"""What is evaluated and against which labels: one `Target` per question (an adapter is one question), read from the
manifests before any model loads, and each target's labels read from the file and checked before any row is scored.

A label column defaults to the column the adapter trained with (manifest ``config.data.label_column``);
``--label-column`` overrides it (``q=col`` per question of a bank). Labels are read as training reads them (a cell as
text, stripped). A missing column, a label the adapter does not know, or a regression label that is not a number is a
one-line error naming the file and the fix; an empty label skips its row (counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from peftkit.artifacts.bank_file import BankFile, read_bank_file, read_bank_index
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.data.files import cell_text, is_blank, short_list
from peftkit.errors import PeftkitError
from peftkit.tasks import TASKS, Task

ADAPTER_QUESTION = "default"  # the question name of a plain adapter, as of a one-question bank


@dataclass(frozen=True)
class Target:
    """One question to evaluate: its task and labels, the file's label column, and the names of predict's columns
    that hold its answers (``prediction``/``prob_<label>``/``adapter``/``error`` for an adapter or a one-question
    bank, ``q``/``q_prob_<label>``/``q_adapter``/``q_error`` per question of a bank of questions)."""

    name: str
    task: Task
    labels: list[str] | None
    label_column: str
    prefix: str  # "" or "q_": what predict puts before prob_<label>, adapter and error
    answer: str  # the label (or score) column predict writes
    segment_column: str | None  # the question's segment column (banks), for per-segment-value rows
    positive: int | None  # binary classification: the index of the label lift and capture count

    def prob_columns(self) -> list[str]:
        return [f"{self.prefix}prob_{label}" for label in self.labels or []]

    @property
    def adapter_column(self) -> str:
        return f"{self.prefix}adapter"

    @property
    def error_column(self) -> str:
        return f"{self.prefix}error"


@dataclass
class Truth:
    """A target's labels per file row: ``values`` (label indices, or floats for regression; NaN where empty) and
    ``given`` (False where the label cell is empty: the row is skipped), plus the labels as read, for the output."""

    values: np.ndarray  # (N,)
    given: np.ndarray  # (N,) bool
    text: list[str]


def parse_label_columns(items: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--label-column`` values (repeated and/or comma-separated) -> (a plain NAME or None, {question: column})."""
    plain, per_question = None, {}
    for item in (part.strip() for value in items or [] for part in value.split(",")):
        if not item:
            continue
        question, eq, column = item.partition("=")
        if not eq:
            if plain is not None and plain != item:
                raise PeftkitError(
                    f"--label-column {plain} and {item}: one plain NAME at most; for a bank of questions "
                    "write --label-column q=COLUMN per question"
                )
            plain = item
        elif not question.strip() or not column.strip():
            raise PeftkitError(f"--label-column {item!r}: write QUESTION=COLUMN, e.g. churn=churned")
        else:
            per_question[question.strip()] = column.strip()
    return plain, per_question


def adapter_targets(
    folder: Path, label_columns: list[str] | None, group_column: str | None = None
) -> list[Target]:
    """The one target of an adapter folder; `group_column`: a column to group its figures by (it routes nothing)."""
    manifest = read_manifest(folder)
    plain, per_question = parse_label_columns(label_columns)
    if per_question:
        raise PeftkitError(
            f"--label-column {next(iter(per_question))}=...: QUESTION=COLUMN is for a bank of questions; "
            "with --adapter give the column name alone"
        )
    column = plain or _label_column(manifest.config)
    return [_target(ADAPTER_QUESTION, manifest.task, manifest.labels, manifest, column, "", group_column)]


def bank_targets(
    folder: Path, label_columns: list[str] | None, questions: list[str] | None, segment_column: str | None
) -> list[Target]:
    """One target per question of the bank (or per question in `questions`)."""
    index, single = read_bank_index(folder)
    plain, per_question = parse_label_columns(label_columns)
    names = list(index.questions)
    unknown = [q for q in [*(questions or []), *per_question] if q not in names]
    if unknown:
        raise PeftkitError(
            f"bank {folder} has no question {', '.join(map(repr, unknown))}; its questions: {', '.join(names)}"
        )
    if plain is not None and len(names) > 1:
        raise PeftkitError(
            f"--label-column {plain}: bank {folder} answers {len(names)} questions ({', '.join(names)}); "
            f"name the question: --label-column {names[0]}={plain}"
        )
    targets = []
    for name in questions or names:
        qfolder = folder / index.questions[name].path
        file = read_bank_file(qfolder)
        column = per_question.get(name) or plain or _label_column(file.config)
        manifest = _reference_manifest(qfolder, file)
        prefix = "" if single else f"{name}_"
        targets.append(
            _target(
                name, file.task, file.labels, manifest, column, prefix, segment_column or file.segment_column
            )
        )
    return targets


def _target(name, task, labels, manifest, column, prefix, segment_column) -> Target:
    """A `Target`; predict's answer column is ``prediction`` without a prefix (an adapter, a one-question bank),
    else the question's name."""
    if task not in TASKS:
        raise PeftkitError(
            f"question {name!r}: task {task!r} is unknown to this peftkit (known: {', '.join(TASKS)})"
        )
    positive = None
    if task == "classification" and labels and len(labels) == 2:
        # The label the adapter's threshold is for (the one a shop targets), else the second label.
        named = (manifest.threshold or {}).get("positive") if manifest is not None else None
        positive = labels.index(named) if named in labels else 1
    answer = name if prefix else "prediction"
    return Target(name, TASKS[task], labels, column, prefix, answer, segment_column, positive)


def _reference_manifest(qfolder: Path, file: BankFile) -> Manifest | None:
    """The manifest of the question's global adapter (else its first): where the positive label is named."""
    if not file.adapters:
        return None
    name = GLOBAL if GLOBAL in file.adapters else next(iter(file.adapters))
    path = Path(file.adapters[name].path)
    try:
        return read_manifest(path if path.is_absolute() else qfolder / path)
    except PeftkitError:
        # A damaged adapter: the bank sets it aside when it opens, and the positive is the default.
        return None


def _label_column(config: dict) -> str:
    return (config.get("data") or {}).get("label_column") or "label"


def read_truth(frame: pd.DataFrame, target: Target, source: str, many: bool) -> Truth:
    """`target`'s labels from `frame`, checked; `many`: the bank has several questions (messages name this one).

    Raises:
        PeftkitError: the column is missing, a label is unknown to the adapter, a regression label is no number.
    """
    flag = f"--label-column {target.name}=COLUMN" if many else "--label-column NAME"
    who = f"question {target.name!r}" if many else "the adapter"
    if target.label_column not in frame.columns:
        also = ", or leave the question out with --questions" if many else ""
        raise PeftkitError(
            f"{source} has no label column {target.label_column!r} for {who} (columns: "
            f"{short_list([str(c) for c in frame.columns])}); name the right one with {flag}{also}"
        )
    text = [cell_text(v).strip() for v in frame[target.label_column].tolist()]
    given = np.array([not is_blank(t) for t in text], dtype=bool)
    if not target.task.labelled:
        values = np.full(len(text), np.nan)
        for row, (label, has) in enumerate(zip(text, given)):
            if has:
                values[row] = _number(label, source, row, target.label_column)
        return Truth(values, given, text)
    index = {label: i for i, label in enumerate(target.labels)}
    unknown = [(row, t) for row, t in enumerate(text) if given[row] and t not in index]
    if unknown:
        names = list(dict.fromkeys(t for _, t in unknown))
        raise PeftkitError(
            f"{source} column {target.label_column!r} has label(s) {who} does not know: "
            f"{short_list([repr(n) for n in names], 5)} (first at row {unknown[0][0] + 1}); it knows "
            f"{', '.join(target.labels)}: fix those rows, or name the right column with {flag}"
        )
    values = np.array([index[t] if has else -1 for t, has in zip(text, given)])
    return Truth(values, given, text)


def _number(label: str, source: str, row: int, column: str) -> float:
    try:
        value = float(label)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PeftkitError(
            f"{source} row {row + 1}: label {label!r} in column {column!r} is not a finite number; a regression "
            "adapter needs numeric labels (fix the cell, or empty it to skip the row)"
        )
    return value
