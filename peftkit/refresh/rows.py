"""New rows for a refresh: checked against every adapter they will train before any training starts, and cut into
the rows candidates train on and the held-out rows the gate scores.

With ``--time-column`` the held-out rows are the newest ones (the latest ``holdout`` share by that column; ties at the
cut go to the held-out side), so the gate measures what the next period will bring: a candidate trained on March is
judged on the end of March, not on rows from inside its own training period. Without it the cut is a seeded random
one, and the gate's rows come from the same period the candidate trained on (the report says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from peftkit.artifacts.manifest import Manifest
from peftkit.data.files import texts_or_errors
from peftkit.data.template import Template
from peftkit.errors import PeftkitError


@dataclass
class Cut:
    """The new rows split: ``train`` (candidates learn from them) and ``held_out`` (the gate scores on them)."""

    train: pd.DataFrame
    held_out: pd.DataFrame
    how: str  # one line for the report: which rows were held out and why


def needed_columns(manifest: Manifest) -> tuple[list[str], str]:
    """(the input columns an adapter's text is built from, its label column)."""
    data = manifest.config.get("data", {})
    template = data.get("template")
    inputs = Template.parse(template).columns if template else [data.get("text_column", "text")]
    return list(inputs), data.get("label_column", "label")


def check_rows(frame: pd.DataFrame, source: str, question: str, manifest: Manifest) -> None:
    """Refuse rows that cannot train or score this question's adapter: a missing input or label column, a label the
    adapter does not know, a regression label that is not a number. One line, naming the column and the question."""
    inputs, label = needed_columns(manifest)
    for column in [*inputs, label]:
        if column not in frame.columns:
            have = ", ".join(map(str, frame.columns[:12]))
            raise PeftkitError(
                f"{source}: question {question!r} needs column {column!r} (its adapters were trained with it); the "
                f"file has {have}"
            )
    values = frame[label].dropna().astype(str).str.strip()
    if manifest.labels is not None:
        unknown = sorted(set(values) - set(manifest.labels) - {""})
        if unknown:
            row = int(np.flatnonzero(values.isin(unknown).to_numpy())[0])
            raise PeftkitError(
                f"{source}: column {label!r} holds labels question {question!r} does not know: "
                f"{', '.join(unknown[:5])} (first at row {values.index[row] + 1}); its labels are "
                f"{', '.join(manifest.labels)}"
            )
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            row = values.index[int(np.flatnonzero(numbers.isna().to_numpy())[0])]
            raise PeftkitError(
                f"{source}: column {label!r} row {row + 1}: {values[row]!r} is not a number (question {question!r} "
                "is a regression)"
            )


def cut(frame: pd.DataFrame, *, holdout: float, time_column: str | None, seed: int, source: str) -> Cut:
    """Split `frame` into candidate-training rows and held-out rows (the newest ones with a time column)."""
    if not 0 < holdout < 1:
        raise PeftkitError(f"--holdout {holdout}: a share between 0 and 1, e.g. 0.2")
    if time_column is None:
        order = np.random.default_rng(seed).permutation(len(frame))
        n = int(round(holdout * len(frame)))
        held, train = np.sort(order[:n]), np.sort(order[n:])
        return Cut(
            frame.iloc[train],
            frame.iloc[held],
            f"a seeded random {holdout:.0%} of the rows (no --time-column)",
        )
    if time_column not in frame.columns:
        raise PeftkitError(f"--time-column {time_column!r}: no such column in {source}")
    when = _times(frame[time_column], time_column, source)
    boundary = when.quantile(1 - holdout)  # rows at or after it are held out
    newest = (when >= boundary).to_numpy()
    if newest.all() or not newest.any():
        raise PeftkitError(
            f"--time-column {time_column!r}: every row of {source} has the same time; nothing is newer to hold out"
        )
    return Cut(
        frame[~newest],
        frame[newest],
        f"the newest {newest.mean():.0%} of the rows by {time_column} (from {boundary})",
    )


def _times(column: pd.Series, name: str, source: str) -> pd.Series:
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all():
        return numbers
    when = pd.to_datetime(column, errors="coerce", utc=True)
    if when.isna().any():
        row = int(np.flatnonzero(when.isna().to_numpy())[0])
        raise PeftkitError(
            f"--time-column {name!r}: row {row + 1} of {source} ({column.iloc[row]!r}) is neither a number nor a "
            "date; fill it in or drop the row"
        )
    return when


def encoded(frame: pd.DataFrame, manifest: Manifest) -> tuple[list[str], np.ndarray, int]:
    """(texts, labels, rows left out) of held-out rows as this adapter reads them: texts built by its template or
    text column; rows whose text cannot be built or whose label is empty are left out and counted."""
    data: dict[str, Any] = manifest.config.get("data", {})
    texts, errors = texts_or_errors(
        frame, text_column=data.get("text_column", "text"), template=data.get("template")
    )
    label = data.get("label_column", "label")
    raw = frame[label].astype(str).str.strip().where(frame[label].notna(), "")
    keep = [
        i for i, (t, e) in enumerate(zip(texts, errors)) if e is None and t is not None and raw.iloc[i] != ""
    ]
    if manifest.labels is not None:
        y = np.array([manifest.labels.index(raw.iloc[i]) for i in keep], dtype=int)
    else:
        y = pd.to_numeric(raw.iloc[keep]).to_numpy(float)
    return [texts[i] for i in keep], y, len(frame) - len(keep)
