"""Turning table rows into training and held-out texts and labels.

Steps, for the train file and (if given) the eval file: read the table, build each row's text (one column, or a
``--template`` over several), read its label, then deduplicate; then hold out rows (the eval file, or a seeded
split of train), and subsample to ``max_train_rows``/``max_eval_rows``. Bad rows are errors, never dropped in
silence: a row number in a message is the 1-based data row of the file (the header is not counted).

Deduplication comes before the split so a repeated text cannot sit on both sides and inflate the held-out score;
a text seen with two different labels is dropped outright, since either label would be a guess. Where each row is
a different entity whose text merely serialises its fields (one row per customer), equal texts are different
customers, and ``data.deduplicate: false`` keeps them all. ``data.group_column`` keeps rows that belong together
(the sentences of one review) on one side of the split: the held-out side is whole groups, drawn in a seeded order.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import pandas as pd

from peftkit.config import Task
from peftkit.data.files import (
    build_texts,
    cell_text,
    is_blank,
    read_table,
    require_column,
    short_list,
    template_columns,
)
from peftkit.data.privacy import empty_counts
from peftkit.errors import PeftkitError

if TYPE_CHECKING:  # the config module imports torch through the method table; this one stays light
    from peftkit.config import DataConfig

TASKS = get_args(Task)


@dataclass
class Splits:
    """Training and held-out rows, ready to tokenize.

    ``train_labels``/``eval_labels`` are indices into ``labels`` (classification, ordinal) or floats (regression,
    where ``labels`` is None). ``train_frame``/``eval_frame`` are the kept rows with all their original columns,
    row ``i`` matching text and label ``i``. ``stats`` says what happened to the rows: ``sources``, ``split``
    (``file``, ``stratified``, ``random`` or ``grouped``); per side (``{"train": n, "eval": n}``) ``rows_read``,
    ``duplicates_removed``, ``conflicting_texts_removed``, ``conflicting_rows_removed`` and ``subsampled_away``;
    ``eval_rows_leaked`` (eval-file rows whose text is in train; dropped unless ``data.deduplicate`` is false),
    ``train_rows``, ``eval_rows``, and ``label_counts`` (classification/ordinal) or ``label_summary`` (regression:
    min, mean, max) per side. With ``data.group_column``: ``groups`` (distinct groups per side) and, with an eval
    file, ``eval_group_rows_dropped`` (eval rows whose group is also in train).
    """

    train_texts: list[str]
    train_labels: list[Any]
    eval_texts: list[str]
    eval_labels: list[Any]
    labels: list[str] | None
    train_frame: pd.DataFrame
    eval_frame: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Part:
    """One side's rows: frame, texts and labels (strings, or floats for regression) stay aligned."""

    source: str
    frame: pd.DataFrame
    texts: list[str]
    labels: list[Any]

    def take(self, rows: Any) -> _Part:
        rows = np.asarray(rows, dtype=int)
        frame = self.frame.iloc[rows].reset_index(drop=True)
        return _Part(self.source, frame, [self.texts[i] for i in rows], [self.labels[i] for i in rows])


def load_splits(data: DataConfig, task: str, seed: int) -> Splits:
    """Read, validate, deduplicate and split the rows that `data` points at.

    Args:
        data: where the rows are and how a row becomes text and label (`peftkit.config.DataConfig`).
        task: ``"classification"``, ``"ordinal"`` or ``"regression"``.
        seed: seeds the train/eval split and the ``max_*_rows`` subsamples.

    Returns:
        The `Splits`; see its docstring for ``stats``.

    Raises:
        PeftkitError: a file, column, row, label or ``--labels`` problem; the message names it and the fix.
    """
    _check_request(data, task)
    train, stats = _read_part(data.train, data, task, "train", {})
    order = _label_order(task, data, train)
    stats["sources"] = {"train": data.train, "eval": data.eval}
    stats["eval_rows_leaked"] = 0
    if data.eval is not None:
        held, stats = _read_part(data.eval, data, task, "eval", stats)
        held = _drop_seen(train, held, data, stats)
        _check_eval_labels(train, held, order)
        stats["split"] = "file"
    else:
        train, held = _split(train, data, task, seed, stats)

    sizes = {"train": len(train.texts), "eval": len(held.texts)}
    train, held = _limit(train, data.max_train_rows, task, seed), _limit(held, data.max_eval_rows, task, seed)
    stats["subsampled_away"] = {
        side: sizes[side] - len(p.texts) for side, p in (("train", train), ("eval", held))
    }
    stats["train_rows"], stats["eval_rows"] = len(train.texts), len(held.texts)
    if data.group_column is not None:
        stats["groups"] = {side: len(set(_groups(p, data))) for side, p in (("train", train), ("eval", held))}
    train_labels, eval_labels = _encode_labels(train, held, order, stats)
    return Splits(train.texts, train_labels, held.texts, eval_labels, order, train.frame, held.frame, stats)


def _check_request(data: DataConfig, task: str) -> None:
    """Fail on an unknown task, or a template that shows the model its own label."""
    if task not in TASKS:
        raise PeftkitError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if data.template is not None and data.label_column in template_columns(data.template):
        raise PeftkitError(
            f"--template uses the label column {{{data.label_column}}}: the model would see the "
            "answer; remove it from the template or pick another --label-column"
        )


def _drop_seen(train: _Part, held: _Part, data: DataConfig, stats: dict) -> _Part:
    """The eval-file rows whose text (or, with ``data.group_column``, group) is not in train; counts into `stats`."""
    known = set(train.texts)  # kept training texts: a conflicting text dropped from train cannot leak
    leaked = [text in known for text in held.texts]
    stats["eval_rows_leaked"] = sum(leaked)
    drop = leaked if data.deduplicate else [False] * len(leaked)
    if data.group_column is not None:
        seen = set(_groups(train, data))
        crossing = [group in seen for group in _groups(held, data)]
        stats["eval_group_rows_dropped"] = sum(c and not d for c, d in zip(crossing, drop))
        drop = [c or d for c, d in zip(crossing, drop)]
    fresh = [i for i, dropped in enumerate(drop) if not dropped]
    if not fresh:
        shares = " (or shares a group with a row of it)" if data.group_column is not None else ""
        raise PeftkitError(
            f"every row of eval file {held.source} also appears in {train.source}{shares}; "
            "give held-out rows that are not in the training file"
        )
    return held.take(fresh)


def _check_eval_labels(train: _Part, held: _Part, order: list[str] | None) -> None:
    """Fail when the eval file has a class label that training never saw."""
    unseen = sorted(set(held.labels) - set(order)) if order else []
    if unseen:
        raise PeftkitError(
            f"eval file {held.source} has labels never seen in training: {short_list(unseen)} "
            f"({train.source} has {short_list(order)}); remove those rows or add training rows"
        )


def check_every_class_trains(splits: Splits) -> None:
    """Fail when a class has no training row (a 2-3 row file, a grouped split, a small ``max_train_rows``): its head
    output would never train, and a held-out row of it would be scored against an untrained class. Training calls
    this; `load_splits` itself still returns such splits, with the counts in ``stats["label_counts"]``.

    Raises:
        PeftkitError: naming the file, the labels left out and each label's train/eval counts.
    """
    if not splits.labels:
        return
    counts = splits.stats.get("label_counts", {})
    missing = [label for label in splits.labels if not counts.get("train", {}).get(label)]
    if missing:
        table = ", ".join(
            f"{label}: {counts['train'].get(label, 0)} train / {counts['eval'].get(label, 0)} eval"
            for label in splits.labels
        )
        source = splits.stats.get("sources", {}).get("train", "the training data")
        raise PeftkitError(
            f"{source}: no training row left for label(s) {short_list(missing)} after the split ({table}); "
            "add rows of those labels, give an --eval file, or raise data.max_train_rows"
        )


def _split(train: _Part, data: DataConfig, task: str, seed: int, stats: dict) -> tuple[_Part, _Part]:
    """Hold out ``data.eval_fraction`` of train (whole groups, or stratified where possible); says how in `stats`."""
    by = f", whole {data.group_column!r} groups" if data.group_column is not None else ""
    stats["sources"]["eval"] = f"{data.eval_fraction:g} of train, seed {seed}{by}"
    if len(train.texts) < 2:
        raise PeftkitError(
            f"{train.source} has {len(train.texts)} usable row(s) after deduplication; "
            "need at least 2 to hold some out (or give --eval)"
        )
    n_eval = min(max(1, math.ceil(len(train.texts) * data.eval_fraction)), len(train.texts) - 1)
    if data.group_column is not None:
        groups = _groups(train, data)
        train_rows, eval_rows = _pick_groups(groups, n_eval, seed, data.group_column, train.source)
        stats["split"] = "grouped"
    else:
        train_rows, eval_rows, stratified = _pick(train, len(train.texts) - n_eval, task, seed)
        stats["split"] = "stratified" if stratified else "random"
    return train.take(train_rows), train.take(eval_rows)


def _encode_labels(train: _Part, held: _Part, order: list[str] | None, stats: dict) -> tuple[list, list]:
    """Labels as indices into `order` (floats as they are for regression); their counts or summary into `stats`."""
    sides = (("train", train), ("eval", held))
    if order is None:
        stats["label_summary"] = {
            side: {"min": min(p.labels), "mean": float(np.mean(p.labels)), "max": max(p.labels)}
            for side, p in sides
        }
        return train.labels, held.labels
    stats["label_counts"] = {side: {name: p.labels.count(name) for name in order} for side, p in sides}
    index = {name: i for i, name in enumerate(order)}
    return [index[n] for n in train.labels], [index[n] for n in held.labels]


def _read_part(path: str, data: DataConfig, task: str, side: str, stats: dict) -> tuple[_Part, dict]:
    """Read one file into texts and labels, validate them, and deduplicate; counts go into `stats`."""
    frame = read_table(path)
    masked: Counter = Counter()
    texts = build_texts(
        frame,
        text_column=data.text_column,
        template=data.template,
        source=path,
        mask_pii=data.mask_pii,
        pii_counts=masked,
    )
    if data.mask_pii:  # counted over the rows read, before deduplication
        stats.setdefault("pii_masked", {"train": empty_counts(), "eval": empty_counts()})[side] = (
            empty_counts() | dict(masked)
        )
    require_column(frame, data.label_column, path, "--label-column")
    if data.group_column is not None:
        require_column(frame, data.group_column, path, "data.group_column")
        empty = [
            row for row, v in enumerate(frame[data.group_column].tolist(), 1) if not cell_text(v).strip()
        ]
        if empty:
            raise PeftkitError(
                f"{path} row {empty[0]}: missing group in column {data.group_column!r} ({len(empty)} such "
                "row(s)); fill them (a row alone can have a value of its own) or remove data.group_column"
            )
    labels = [cell_text(value).strip() for value in frame[data.label_column].tolist()]
    missing = [row for row, label in enumerate(labels, 1) if is_blank(label)]
    if missing:
        raise PeftkitError(
            f"{path} row {missing[0]}: missing label in column {data.label_column!r} "
            f"({len(missing)} such row(s)); fill or remove them"
        )
    if task == "regression":
        numbers = [_number(label) for label in labels]
        if None in numbers:
            row = numbers.index(None)
            raise PeftkitError(
                f"{path} row {row + 1}: label {labels[row]!r} in column {data.label_column!r} "
                "is not a finite number; regression needs numeric labels"
            )
        labels = numbers

    table = pd.DataFrame({"text": texts, "label": labels})
    if data.deduplicate:
        conflict = (table.groupby("text", sort=False)["label"].transform("nunique") > 1).to_numpy()
        repeat = table.duplicated(["text", "label"]).to_numpy()
    else:  # one row per entity: equal texts are different customers, each with its own outcome
        conflict = repeat = np.zeros(len(table), dtype=bool)
    # The packaged reviews arrive deduplicated; their attrs carry what was removed from the raw files.
    before = frame.attrs
    counts = {
        "rows_read": before.get("rows_read", len(table)),
        "duplicates_removed": before.get("duplicates_removed", 0) + int(repeat.sum()),
        "conflicting_texts_removed": before.get("dropped_conflicts", 0) + table["text"][conflict].nunique(),
        "conflicting_rows_removed": before.get("dropped_conflict_rows", 0) + int((conflict & ~repeat).sum()),
    }
    for key, value in counts.items():
        stats.setdefault(key, {"train": 0, "eval": 0})[side] = int(value)
    part = _Part(path, frame, texts, labels)
    return part.take(np.flatnonzero(~conflict & ~repeat)), stats


def _label_order(task: str, data: DataConfig, train: _Part) -> list[str] | None:
    if task == "regression":
        if data.labels is not None:
            raise PeftkitError("--labels is for classification and ordinal tasks; remove it for regression")
        return None
    seen = set(train.labels)
    numeric = all(_number(label) is not None for label in seen)
    if data.labels is not None:
        order = [str(label).strip() for label in data.labels]
        unknown, unused = sorted(seen - set(order)), [label for label in order if label not in seen]
        if len(set(order)) != len(order) or unknown or unused:
            raise PeftkitError(
                f"--labels {','.join(order)} does not match the labels in {train.source} "
                f"({short_list(_sorted(seen, numeric))}): not listed: {short_list(unknown) or 'none'}; "
                f"never seen: {short_list(unused) or 'none'}; list each training label exactly once"
            )
    elif task == "ordinal" and not numeric:
        raise PeftkitError(
            f"ordinal labels in {train.source} are not numbers, so their order is unknown "
            f"({short_list(sorted(seen))}); give it lowest first, e.g. --labels weak,medium,strong"
        )
    else:
        order = _sorted(seen, numeric)  # numbers in numeric order (1, 2, 10), anything else alphabetically
    if len(order) < 2:
        raise PeftkitError(
            f"{task} needs at least 2 labels; {train.source} has only {short_list(order)} in column "
            f"{data.label_column!r} (check --label-column)"
        )
    return order


def _pick(part: _Part, n_keep: int, task: str, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seeded choice of `n_keep` rows (and the rest), stratified by label when every class can be on both sides."""
    from sklearn.model_selection import train_test_split  # slow import, only needed here

    n = len(part.texts)
    counts = pd.Series(part.labels).value_counts() if task != "regression" else None
    stratify = counts is not None and counts.min() >= 2 and min(n_keep, n - n_keep) >= len(counts)
    keep, rest = train_test_split(
        np.arange(n), train_size=n_keep, random_state=seed, stratify=part.labels if stratify else None
    )
    if counts is not None and not stratify:
        keep, rest = _cover_classes(part.labels, keep, rest)
    return keep, rest, stratify


def _cover_classes(labels: list, keep: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Swap rows so that `keep` has a row of every class where it can: for each class with no row kept, one of its
    rows comes in and a row of the most repeated kept class goes out (a random split of a tiny file can leave a
    class out of training entirely). Where `keep` has too few rows, `_check_every_class_trains` says so."""
    keep, rest = list(keep), list(rest)
    for label in dict.fromkeys(labels[i] for i in rest):
        kept = [labels[i] for i in keep]
        if label in kept:
            continue
        spare = max(set(kept), key=kept.count, default=None)
        if spare is None or kept.count(spare) < 2:
            break
        out = next(i for i in reversed(keep) if labels[i] == spare)
        into = next(i for i in rest if labels[i] == label)
        keep[keep.index(out)], rest[rest.index(into)] = into, out
    return np.asarray(keep, dtype=int), np.asarray(rest, dtype=int)


def _groups(part: _Part, data: DataConfig) -> list[str]:
    """Each row's group, as text (checked present in `_read_part`)."""
    return [cell_text(value).strip() for value in part.frame[data.group_column].tolist()]


def _pick_groups(
    groups: list[str], n_eval: int, seed: int, column: str, source: str
) -> tuple[list[int], list[int]]:
    """Seeded choice of whole groups for the held-out side, until it has at least `n_eval` rows.

    Groups are drawn in a seeded random order; the last in that order always stays in training, so neither side is
    empty. Not stratified: whole groups cannot be balanced by label row by row.
    """
    order = list(dict.fromkeys(groups))  # first-seen order, so the seed alone decides the draw
    if len(order) < 2:
        raise PeftkitError(
            f"{source}: data.group_column {column!r} has {len(order)} distinct value(s); need at least 2 groups "
            "to hold some out (or remove data.group_column)"
        )
    sizes = pd.Series(groups).value_counts()
    held: set[str] = set()
    count = 0
    for index in np.random.default_rng(seed).permutation(len(order))[:-1]:
        if count >= n_eval:
            break
        held.add(order[index])
        count += int(sizes[order[index]])
    eval_rows = [i for i, group in enumerate(groups) if group in held]
    train_rows = [i for i, group in enumerate(groups) if group not in held]
    return train_rows, eval_rows


def _limit(part: _Part, limit: int | None, task: str, seed: int) -> _Part:
    """The ``max_*_rows`` cap: a seeded (stratified where possible) subsample, so a default run can be fast."""
    return part if limit is None or limit >= len(part.texts) else part.take(_pick(part, limit, task, seed)[0])


def _number(label: str) -> float | None:
    """The label as a finite float, or None (``nan``/``inf`` are no use as a target or for ordering)."""
    with contextlib.suppress(ValueError):
        if math.isfinite(value := float(label)):
            return value
    return None


def _sorted(labels: set[str], numeric: bool) -> list[str]:
    return sorted(labels, key=lambda label: (_number(label), label)) if numeric else sorted(labels)
