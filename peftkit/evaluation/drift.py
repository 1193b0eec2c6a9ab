"""``peftkit drift``: how far recent rows have moved from what an adapter (or each adapter of a bank) was trained on.

    report = drift_report("recent.csv", bank=Path("banks/shop"))
    report["worst"], report["table"][0]          # "major", the field or score that moved most

Every adapter folder written by training holds ``profile.json`` (`peftkit.data.profile`): each field it reads in
buckets, and its held-out scores in bins. Here the recent rows are put into the same buckets (masked as training
masked them) and each field's population stability index (`peftkit.data.profile.psi`) is taken against the training
shares; with scores, the rows are scored exactly as ``peftkit predict`` scores them (`predict_frame`: the adapter's
template, its fitted temperature and threshold) and the score distribution and predicted-label shares are compared
the same way. In a bank every adapter is compared with the rows it answers: a segment adapter with the rows of its
segment values, the global adapter (trained on every row) with every row, scored by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from peftkit.artifacts.bank_file import read_bank_file, read_bank_index
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.data import read_table
from peftkit.data.files import short_list
from peftkit.data.profile import (
    MAJOR,
    MIN_ROWS,
    MODERATE,
    PSI_FLOOR,
    bucket_shares,
    cell_texts,
    field_columns,
    flag,
    label_shares,
    psi,
    read_profile,
    score_shares,
    unk_share,
)
from peftkit.errors import PeftkitError
from peftkit.inference.bank import segment_of
from peftkit.inference.table import open_model, predict_frame

log = logging.getLogger("peftkit")
ADAPTER = "all"  # the segment name of a plain adapter's one comparison
NO_PROFILE = (
    "adapter {folder} was trained before profiles (it has no profile.json), so drift has nothing to compare with; "
    "retrain it with this peftkit (peftkit train writes profile.json beside the weights)"
)


@dataclass
class _Unit:
    """One comparison: an adapter's profile against the recent rows it answers."""

    question: str
    segment: str  # the adapter's name in its bank ("global", "app"...), or "all" for a plain adapter
    folder: Path
    data_cfg: dict[str, Any]
    labels: list[str] | None
    rows: np.ndarray  # (N,) bool: the recent rows this adapter answers
    prefix: str  # predict's column prefix for the question ("" or "q_")
    routed: bool  # scored by routing (a segment adapter), not on every row (an adapter, the global adapter)
    profile: dict[str, Any] | None


def drift_report(
    data: str | pd.DataFrame,
    *,
    adapter: Path | None = None,
    bank: Path | None = None,
    questions: list[str] | None = None,
    segment_column: str | None = None,
    scores: bool = True,
    base: str | None = None,
    quant: str | None = None,
    batch_size: int = 64,
    source: str | None = None,
) -> dict[str, Any]:
    """Compare recent rows with the profile of `adapter`, or of every adapter of `bank`; see the module docstring.

    Args:
        data: a CSV/JSONL/Parquet file (or ``builtin:`` dataset), or the rows as a frame.
        questions: with a bank: the questions to check (default all); segment_column: the column naming each row's
            segment (default each question's own).
        scores: also score the rows and compare the score and predicted-label distributions (loads the model).
        base, quant, batch_size: as for ``peftkit predict``; source: the rows' name in messages (a frame's).

    Returns:
        A plain dict (docs/drift.md): ``questions`` -> segment -> fields/scores/labels, each with ``psi`` and
        ``flag``; ``table`` (one row per comparison, largest PSI first); ``flags`` counts; ``worst``.

    Raises:
        PeftkitError: bad options, an unreadable file, a column a question reads missing from the rows, or no
            adapter with a profile.
    """
    if (adapter is None) == (bank is None):
        raise PeftkitError("give exactly one of --adapter (one adapter) or --bank (an adapter bank)")
    if adapter is not None and (questions or segment_column):
        raise PeftkitError(
            "--questions and --segment-column need --bank; an adapter answers every row itself"
        )
    frame = data if isinstance(data, pd.DataFrame) else read_table(data)
    source = source or (str(data) if not isinstance(data, pd.DataFrame) else "the rows")
    units = (
        [_adapter_unit(Path(adapter), len(frame))]
        if adapter is not None
        else _bank_units(Path(bank), frame, questions, segment_column, source)
    )
    profiled = [u for u in units if u.profile is not None]
    if not profiled:
        raise PeftkitError(NO_PROFILE.format(folder=units[0].folder))
    for unit in profiled:
        _check_columns(unit, frame, source, many=bank is not None)
    answered, tokenizer = {}, None
    if scores:
        answered, tokenizer = _score(
            frame, units, adapter, bank, segment_column, base, quant, batch_size, source
        )
    report: dict[str, Any] = {
        "data": source,
        ("adapter" if adapter is not None else "bank"): str(adapter if adapter is not None else bank),
        "rows": len(frame),
        "scored": scores,
        "thresholds": {"moderate": MODERATE, "major": MAJOR, "psi_floor": PSI_FLOOR},
        "questions": {},
    }
    for unit in units:
        entry = _compare(unit, frame, answered.get(unit.routed), tokenizer)
        report["questions"].setdefault(unit.question, {})[unit.segment] = entry
    report["table"] = _table(report["questions"])
    report["flags"] = {
        level: sum(r["flag"] == level for r in report["table"]) for level in ("moderate", "major")
    }
    report["worst"] = (
        "major" if report["flags"]["major"] else "moderate" if report["flags"]["moderate"] else None
    )
    return report


def _adapter_unit(folder: Path, n: int) -> _Unit:
    manifest = read_manifest(folder)
    data_cfg = manifest.config.get("data", {})
    rows = np.ones(n, dtype=bool)
    return _Unit("default", ADAPTER, folder, data_cfg, manifest.labels, rows, "", False, read_profile(folder))


def _bank_units(
    folder: Path, frame: pd.DataFrame, questions: list[str] | None, segment_column: str | None, source: str
) -> list[_Unit]:
    """One unit per adapter of each question: the global adapter on every row, a segment adapter on its values."""
    index, single = read_bank_index(folder)
    unknown = [q for q in questions or [] if q not in index.questions]
    if unknown:
        raise PeftkitError(
            f"bank {folder} has no question {', '.join(map(repr, unknown))}; its questions: "
            f"{', '.join(index.questions)}"
        )
    units = []
    for name in questions or list(index.questions):
        qfolder = folder / index.questions[name].path
        file = read_bank_file(qfolder)
        column = segment_column or file.segment_column
        segments = _segment_values(frame, column, source, name) if set(file.adapters) - {GLOBAL} else None
        for adapter_name, entry in file.adapters.items():
            path = Path(entry.path)
            afolder = path if path.is_absolute() else qfolder / path
            manifest = read_manifest(afolder)
            if adapter_name == GLOBAL:
                rows = np.ones(len(frame), dtype=bool)
            else:
                values = {v for v, a in file.segments.items() if a == adapter_name}
                values |= {adapter_name} - set(file.segments)  # an adapter added by name answers for itself
                rows = np.array([s in values for s in segments], dtype=bool)
            units.append(
                _Unit(name, adapter_name, afolder, manifest.config.get("data", {}), manifest.labels, rows,
                      "" if single else f"{name}_", adapter_name != GLOBAL, read_profile(afolder))
            )  # fmt: skip
    return units


def _segment_values(frame: pd.DataFrame, column: str | None, source: str, question: str) -> list[str | None]:
    if column is None:
        return [None] * len(frame)
    if column not in frame.columns:
        raise PeftkitError(
            f"{source} has no segment column {column!r} for question {question!r} (columns: "
            f"{short_list([str(c) for c in frame.columns])}); add it or name another with --segment-column"
        )
    return [segment_of({"v": v}, "v") for v in frame[column].tolist()]


def _check_columns(unit: _Unit, frame: pd.DataFrame, source: str, many: bool) -> None:
    """Every column the adapter reads must be in the rows (a field absent would drift to 100% empty)."""
    for column in field_columns(unit.data_cfg):
        if column not in frame.columns:
            who = f"question {unit.question!r} (adapter {unit.segment})" if many else "the adapter"
            how = (
                f"template {unit.data_cfg['template']!r}" if unit.data_cfg.get("template") else "text column"
            )
            also = ", or leave the question out with --questions" if many else ""
            raise PeftkitError(f"{source} has no column {column!r}, which {who} reads ({how}); add it{also}")


def _score(frame, units, adapter, bank, segment_column, base, quant, batch_size, source):
    """Predict's answer frames: {routed: the rows routed to their segment's adapter, not routed: every row answered
    by the adapter (or each question's global adapter)}, and the tokenizer."""
    model = open_model(adapter=adapter, bank=bank, base=base, quant=quant, batch_size=batch_size)
    log.info("drift: scoring %d rows of %s", len(frame), source)
    if adapter is not None:
        return {False: predict_frame(frame, model, source=source).frame}, model.tokenizer
    answered = {}
    routed = sorted({u.question for u in units if u.routed and u.profile is not None})
    if routed:
        answered[True] = predict_frame(
            frame, model, source=source, questions=routed, segment_column=segment_column
        ).frame
    whole = sorted({u.question for u in units if not u.routed and u.profile is not None})
    if whole:
        answered[False] = predict_frame(frame, model, source=source, questions=whole, segment=GLOBAL).frame
    return answered, model.tokenizer


def _compare(unit: _Unit, frame: pd.DataFrame, answered: pd.DataFrame | None, tokenizer) -> dict[str, Any]:
    """One adapter's entry: its fields, scores and predicted labels against the recent rows it answers."""
    entry: dict[str, Any] = {"adapter": str(unit.folder), "rows": int(unit.rows.sum())}
    if unit.profile is None:
        return entry | {"error": NO_PROFILE.format(folder=unit.folder)}
    entry["trained_rows"] = unit.profile.get("rows")
    if not entry["rows"]:
        return entry | {"note": "no recent rows for this adapter"}
    if entry["rows"] < MIN_ROWS:
        entry["note"] = f"only {entry['rows']} recent rows: PSI on so few is noisy"
    rows = frame[unit.rows]
    mask = bool(unit.data_cfg.get("mask_pii", False))
    entry["fields"] = {}
    for name, spec in unit.profile["fields"].items():
        values = rows[name].tolist()
        compared = _compared(
            spec["kind"], spec["buckets"], spec["shares"], bucket_shares(spec, values, mask=mask)
        )
        if "unk_share" in spec and tokenizer is not None:
            texts = [t for t in cell_texts(values, mask) if t is not None]
            compared["unk_share"] = {"train": spec["unk_share"], "recent": unk_share(texts, tokenizer)}
        entry["fields"][name] = compared
    spec = unit.profile.get("scores")
    if answered is not None and spec is not None:
        entry.update(_compare_scores(unit, spec, answered))
    elif answered is not None:
        entry["note"] = "no held-out scores in the profile (trained without held-out rows)"
    return entry


def _compared(kind: str, buckets: list[str], train: list[float], recent: list[float]) -> dict[str, Any]:
    value = psi(train, recent)
    moved = int(np.argmax(np.abs(np.asarray(recent) - np.asarray(train))))
    return {
        "kind": kind,
        "psi": round(value, 4),
        "flag": flag(value),
        "change": f"{buckets[moved]}: {train[moved]:.0%} -> {recent[moved]:.0%}",
        "shares": {b: {"train": t, "recent": r} for b, t, r in zip(buckets, train, recent)},
    }


def _compare_scores(unit: _Unit, spec: dict[str, Any], answered: pd.DataFrame) -> dict[str, Any]:
    """The score distribution (and predicted-label shares) of the rows this adapter answered, against held-out."""
    p = unit.prefix
    answer = unit.question if p else "prediction"
    ok = answered[answer].notna().to_numpy() & unit.rows
    if f"{p}error" in answered.columns:
        ok &= answered[f"{p}error"].isna().to_numpy()
    if unit.routed:
        ok &= (answered[f"{p}adapter"].astype(str) == unit.segment).to_numpy()
    if not ok.any():
        return {"scores": None}
    rows = answered[ok]
    if spec["kind"] == "regression":
        values = rows[answer].to_numpy(dtype=float)
    elif spec["kind"] == "positive":
        values = rows[f"{p}prob_{spec['label']}"].to_numpy(dtype=float)
    else:
        values = rows[[f"{p}prob_{label}" for label in unit.labels]].to_numpy(dtype=float).max(axis=1)
    what = {"positive": f"p({spec.get('label')})", "top": "top-label probability", "regression": "score"}
    out = {
        "scores": _compared(what[spec["kind"]], spec["buckets"], spec["shares"], score_shares(spec, values))
    }
    out["scores"]["rows"] = int(ok.sum())
    if "predicted" in spec:
        labels = list(spec["predicted"])
        recent = label_shares(labels, rows[answer].astype(str).tolist())
        out["labels"] = _compared(
            "predicted labels", labels, list(spec["predicted"].values()), list(recent.values())
        )
    return out


def _table(questions: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """Every comparison as one row (question, segment, what, kind, rows, psi, flag, change), largest PSI first."""
    table = []
    for question, segments in questions.items():
        for segment, entry in segments.items():
            parts = [(f, e) for f, e in (entry.get("fields") or {}).items()]
            parts += [(k, entry[k]) for k in ("scores", "labels") if entry.get(k)]
            for what, e in parts:
                table.append(
                    {"question": question, "segment": segment, "what": what, "kind": e["kind"],
                     "rows": e.get("rows", entry["rows"]), "psi": e["psi"], "flag": e["flag"], "change": e["change"]}
                )  # fmt: skip
    return sorted(table, key=lambda r: -r["psi"])
