"""``profile.json``: a compact, privacy-safe summary of what an adapter was trained on, written by training beside the
weights, so that ``peftkit drift`` can tell later how far new rows have moved from it (docs/drift.md).

    profile = training_profile(cfg.data.model_dump(mode="json"), splits.train_frame, labels=..., decoded=...)
    counts = bucket_shares(profile["fields"]["orders_90d"], recent["orders_90d"].tolist(), mask=True)
    psi(expected_shares, actual_shares)

What is profiled: every column the adapter reads (each template field, or the text column), as one of three kinds,
each summarised as shares of rows per bucket (``buckets`` and ``shares``, aligned; ``empty`` is always a bucket):

- ``numeric`` (every non-empty value is a number): up to 10 quantile bins of the training rows, right-closed, plus
  ``not a number`` (always 0 in training; what a recent row that is no number falls into).
- ``categorical`` (the frequent values cover at least half the rows): the share of each value seen in at least
  `MIN_ROWS` rows *and* `MIN_SHARE` of the rows; every other value is pooled as ``other``.
- ``text`` (anything else: free text, identifiers): the length in characters, in up to 10 quantile bins, and the
  share of unknown tokens (``unk_share``) when the tokenizer has an unknown token (WordPiece, SentencePiece
  unigram). Byte-level tokenizers (GPT-2, Llama's byte fallback) never produce one, so there it is left out.

The adapter's held-out scores are profiled too (``scores``): the positive label's probability (two labels), the top
label's probability (more labels) or the score (regression) in fixed bins, and the shares of predicted and true labels.

Privacy rules (the profile travels with the adapter, so it must not name a user):

- no raw text and no value seen in fewer than `MIN_ROWS` rows or `MIN_SHARE` of rows: rare categories are pooled
  as ``other``; free text and identifiers keep only their length distribution;
- numeric bin edges are quantiles *between* rows, rounded to 3 significant digits, and there are at most
  ``rows // MIN_ROWS`` bins, so every bin holds about `MIN_ROWS` rows or more: no edge is one user's exact value;
- values are masked as training masked them (``data.mask_pii``, `peftkit.data.privacy`) before anything is counted;
- only the columns the adapter reads are profiled; the label column appears only as label shares.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftkit.artifacts.io import write_json
from peftkit.data.files import cell_text, is_blank
from peftkit.data.privacy import mask_text
from peftkit.data.template import Template
from peftkit.errors import PeftkitError

PROFILE = "profile.json"
PROFILE_VERSION = 1
MIN_ROWS = 20  # a value (or a bin) must cover at least this many training rows to be named
MIN_SHARE = 0.01  # ... and at least this share of them
BINS = 10  # quantile bins per numeric field or text length
SCORE_EDGES = [round(0.1 * i, 1) for i in range(1, 10)]  # probability bins: (0, .1], (.1, .2] ... (.9, 1]
PSI_FLOOR = 1e-4  # a bucket's share is floored at this before the log, so an empty bucket counts, finitely
MODERATE, MAJOR = 0.1, 0.25  # Siddiqi (2006): < 0.1 stable, 0.1-0.25 moderate shift, >= 0.25 major shift
EMPTY, NOT_NUMBER, OTHER = "empty", "not a number", "other"
_TOKENIZED_ROWS = 2000  # rows tokenized for the unknown-token share: a sample is plenty for a share


def field_columns(data_cfg: dict[str, Any]) -> list[str]:
    """The columns an adapter reads: its template's fields, or its text column."""
    template = data_cfg.get("template")
    return Template.parse(template).columns if template else [data_cfg.get("text_column") or "text"]


def cell_texts(values: list[Any], mask: bool) -> list[str | None]:
    """Each cell as stripped text (None where empty), masked as training masked it."""
    out: list[str | None] = []
    for value in values:
        text = cell_text(value).strip()
        out.append(None if is_blank(text) else (mask_text(text) if mask else text))
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _round(value: float) -> float:
    """3 significant digits: an edge says where a bin ends, not which user sat there."""
    return float(f"{value:.3g}")


def _quantile_edges(values: np.ndarray, min_rows: int, bins: int) -> list[float]:
    """Interior edges of up to `bins` quantile bins, each about `min_rows` rows or more, rounded, distinct."""
    n = min(bins, len(values) // min_rows)
    if n < 2:
        return []
    edges = np.quantile(values, np.arange(1, n) / n)  # interpolated between rows
    return sorted({_round(float(e)) for e in edges})


def _edge_buckets(edges: list[float], unit: str = "") -> list[str]:
    if not edges:
        return [f"any{unit}"]
    names = [f"<= {edges[0]:g}{unit}"]
    names += [f"({a:g}, {b:g}]{unit}" for a, b in zip(edges, edges[1:])]
    return names + [f"> {edges[-1]:g}{unit}"]


def _bin_counts(values: list[float], edges: list[float]) -> list[int]:
    # side="left": bin i holds edges[i-1] < x <= edges[i] (right-closed, as the bucket names say)
    index = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float), side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(int).tolist()


def _shares(counts: list[int], total: int) -> list[float]:
    return [round(c / total, 6) if total else 0.0 for c in counts]


def profile_field(
    values: list[Any],
    *,
    mask: bool,
    tokenizer: Any = None,
    min_rows: int = MIN_ROWS,
    min_share: float = MIN_SHARE,
    bins: int = BINS,
) -> dict[str, Any]:
    """The profile of one column over the training rows: its kind, buckets and shares (module docstring)."""
    texts = cell_texts(values, mask)
    present = [t for t in texts if t is not None]
    numbers = [_number(t) for t in present]
    if present and all(n is not None for n in numbers):
        spec: dict[str, Any] = {
            "kind": "numeric",
            "edges": _quantile_edges(np.asarray(numbers), min_rows, bins),
        }
    else:
        counts = Counter(present)
        floor = max(min_rows, math.ceil(min_share * len(texts)))
        kept = sorted((v for v, c in counts.items() if c >= floor), key=lambda v: (-counts[v], v))
        if present and sum(counts[v] for v in kept) >= len(present) / 2:
            spec = {"kind": "categorical", "values": kept}
        else:
            lengths = np.asarray([len(t) for t in present], dtype=float)
            spec = {"kind": "text", "length_edges": _quantile_edges(lengths, min_rows, bins)}
            unk = unk_share(present, tokenizer)
            if unk is not None:
                spec["unk_share"] = round(unk, 6)
    spec["rows"] = len(texts)
    spec["buckets"] = buckets(spec)
    spec["shares"] = bucket_shares(spec, values, mask=mask)
    return spec


def buckets(spec: dict[str, Any]) -> list[str]:
    """The bucket names of a field profile, in the order of its ``shares``."""
    if spec["kind"] == "numeric":
        return [EMPTY, NOT_NUMBER, *_edge_buckets(spec["edges"])]
    if spec["kind"] == "categorical":
        return [EMPTY, *spec["values"], OTHER]
    return [EMPTY, *_edge_buckets(spec["length_edges"], " chars")]


def bucket_shares(spec: dict[str, Any], values: list[Any], *, mask: bool) -> list[float]:
    """The share of `values` in each bucket of the field profile `spec` (training's buckets, for any rows)."""
    texts = cell_texts(values, mask)
    present = [t for t in texts if t is not None]
    empty = len(texts) - len(present)
    if spec["kind"] == "numeric":
        numbers = [_number(t) for t in present]
        good = [n for n in numbers if n is not None]
        counts = [empty, len(numbers) - len(good), *_bin_counts(good, spec["edges"])]
    elif spec["kind"] == "categorical":
        index = {v: i for i, v in enumerate(spec["values"])}
        counts = [0] * (len(index) + 1)
        for t in present:
            counts[index.get(t, len(index))] += 1
        counts = [empty, *counts]
    else:
        counts = [empty, *_bin_counts([len(t) for t in present], spec["length_edges"])]
    return _shares(counts, len(texts))


def unk_share(texts: list[str], tokenizer: Any) -> float | None:
    """The share of tokens that are the tokenizer's unknown token; None without a tokenizer or an unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None) if tokenizer is not None else None
    if unk is None or not texts:
        return None
    ids = tokenizer(list(texts[:_TOKENIZED_ROWS]), add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    return sum(row.count(unk) for row in ids) / total if total else 0.0


@dataclass
class ScoreSample:
    """Scores of some rows, as `Task.decode` gives them: what the held-out profile (and drift's recent one) bins.

    ``values``: (N,) the positive label's probability (``kind="positive"``), the top label's probability
    (``"top"``), or the regression score (``"regression"``); ``predicted``/``true``: label names per row, or None.
    """

    kind: str
    values: np.ndarray
    label: str | None = None  # the positive label, for kind "positive"
    predicted: list[str] | None = None
    true: list[str] | None = None

    @classmethod
    def decoded(
        cls, decoded: Any, labels: list[str] | None, positive: int | None, true: Any = None
    ) -> ScoreSample:
        """From a `peftkit.tasks.Decoded` (held-out rows) and the label indices `true` (None for regression)."""
        if decoded.score is not None and decoded.index is None:
            return cls("regression", np.asarray(decoded.score, dtype=float))
        probs = np.asarray(decoded.probs, dtype=float)  # (N, K)
        names = [labels[i] for i in np.asarray(decoded.index).tolist()]
        truth = [labels[int(i)] for i in np.asarray(true).tolist()] if true is not None else None
        if len(labels) == 2:
            p = 1 if positive is None else positive
            return cls("positive", probs[:, p], labels[p], names, truth)
        return cls("top", probs.max(axis=1), None, names, truth)


def score_profile(sample: ScoreSample, labels: list[str] | None, min_rows: int = MIN_ROWS) -> dict[str, Any]:
    """The held-out score profile: fixed probability bins (quantile bins for a regression score) and label shares."""
    edges = (
        _quantile_edges(sample.values, min_rows, BINS) if sample.kind == "regression" else list(SCORE_EDGES)
    )
    out: dict[str, Any] = {"kind": sample.kind, "rows": len(sample.values), "edges": edges}
    if sample.label is not None:
        out["label"] = sample.label
    out["buckets"] = _edge_buckets(edges)
    out["shares"] = score_shares(out, sample.values)
    if labels and sample.predicted is not None:
        out["predicted"] = label_shares(labels, sample.predicted)
        if sample.true is not None:
            out["true"] = label_shares(labels, sample.true)
    return out


def score_shares(spec: dict[str, Any], values: np.ndarray) -> list[float]:
    return _shares(_bin_counts(list(values), spec["edges"]), len(values))


def label_shares(labels: list[str], names: list[str]) -> dict[str, float]:
    counts = Counter(names)
    return {label: round(counts[label] / len(names), 6) if names else 0.0 for label in labels}


def training_profile(
    data_cfg: dict[str, Any],
    frame: pd.DataFrame,
    *,
    labels: list[str] | None = None,
    decoded: Any = None,
    positive: int | None = None,
    true: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """The profile of an adapter's training rows (`frame`, as `Splits.train_frame`) and held-out scores.

    Args:
        data_cfg: the run's ``data`` config as JSON (template or text column, ``mask_pii``).
        labels: the adapter's labels (None for regression).
        decoded: the held-out rows as `Task.decode` gave them with the fitted decision (what predict gives); None
            when there were none (the profile then has no ``scores``).
        positive: two labels: the index of the positive label (default the second); true: held-out label indices.
        tokenizer: the base's tokenizer, for the unknown-token share of text fields.
    """
    mask = bool(data_cfg.get("mask_pii", False))
    fields = {
        column: profile_field(frame[column].tolist() if column in frame else [None] * len(frame), mask=mask,
                              tokenizer=tokenizer)
        for column in field_columns(data_cfg)
    }  # fmt: skip
    profile: dict[str, Any] = {
        "format_version": PROFILE_VERSION,
        "rows": len(frame),
        "privacy": {"min_rows": MIN_ROWS, "min_share": MIN_SHARE, "masked": mask},
        "fields": fields,
    }
    held_out = ScoreSample.decoded(decoded, labels, positive, true) if decoded is not None else None
    if held_out is not None and len(held_out.values):
        profile["scores"] = score_profile(held_out, labels)
    return profile


def write_profile(folder: Path, profile: dict[str, Any]) -> None:
    write_json(Path(folder) / PROFILE, profile)


def read_profile(folder: str | Path) -> dict[str, Any] | None:
    """The profile of an adapter folder; None for an adapter trained before profiles existed."""
    path = Path(folder) / PROFILE
    if not path.is_file():
        return None
    try:
        profile = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PeftkitError(f"{path} is damaged ({exc}); retrain the adapter to write a new one") from None
    if not isinstance(profile, dict) or profile.get("format_version", 0) > PROFILE_VERSION:
        raise PeftkitError(f"{path} was written by a newer peftkit (or is no profile); upgrade peftkit")
    return profile


def psi(expected: list[float], actual: list[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index: sum over buckets of ``(a - e) * ln(a / e)``, shares floored at `floor`.

    0 for identical shares; Siddiqi's conventions read it as stable below 0.1, a moderate shift up to 0.25, a major
    shift above (`MODERATE`, `MAJOR`).
    """
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def flag(value: float | None) -> str | None:
    """``"major"``, ``"moderate"`` or None for a PSI (None: nothing to compare)."""
    if value is None or value < MODERATE:
        return None
    return "major" if value >= MAJOR else "moderate"
