"""``peftkit refresh``: retrain a bank's adapters (or one adapter) on new rows, and promote only what the gate passes.

For each question and each of its adapters (the global one on every row, a segment's on its segment's rows):

1. a candidate trains from the adapter in production (warm start, ``init_from``) on the new training rows, plus a
   ``replay_share`` of older rows when given; its own best epoch, temperature and threshold come from a share of
   those rows, as any training's do;
2. the candidate and the production adapter answer the same held-out rows (`peftkit.refresh.rows.cut`: the newest
   with a time column), each with its own decision;
3. the gate (`peftkit.refresh.gate.judge`) promotes or keeps; a promoted candidate becomes the adapter's next
   immutable version and the production pointer moves to it (`peftkit.artifacts.versions`: atomic, recorded in the
   history, undone with ``peftkit bank rollback``). ``dry_run`` trains and reports without promoting.

Every check of the new rows (columns, labels) runs before the first candidate trains. A ``kill -9`` at any point
leaves the bank as before (candidates live in a temporary folder until `add_version` copies one in whole) or with
some adapters promoted and the rest as before; running the command again retrains what was not promoted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from peftkit.artifacts.bank_file import read_bank_file, read_bank_index
from peftkit.artifacts.io import atomic_folder, check_writable_path
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.artifacts.versions import add_version, production, promote, question_folder
from peftkit.config import RunConfig
from peftkit.data import read_table
from peftkit.errors import PeftkitError
from peftkit.refresh.gate import DEFAULT_MARGIN, MIN_ROWS, Verdict, judge
from peftkit.refresh.rows import Cut, check_rows, cut, encoded

log = logging.getLogger("peftkit")
MIN_TRAIN_ROWS = 50  # fewer new training rows than this for an adapter: no candidate, the current one stays


@dataclass
class Unit:
    """One adapter a refresh may replace: where it lives and which new rows are its own."""

    question: str
    adapter: str
    folder: Path  # the adapter in production
    manifest: Manifest
    question_folder: Path | None  # None for a lone adapter (no versions, no pointer)
    segment_column: str | None = None
    segment_values: list[str] | None = None  # None: every row (the global adapter, a lone adapter)

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.segment_values is None:
            return frame
        return frame[frame[self.segment_column].astype(str).isin(self.segment_values)]


@dataclass
class RefreshReport:
    data: str
    target: str
    cut: str
    dry_run: bool
    margin: float
    results: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "target": self.target,
            "held_out": self.cut,
            "dry_run": self.dry_run,
            "margin": self.margin,
            "results": self.results,
            "promoted": sum(r["decision"] == "promoted" for r in self.results),
            "drift": self.drift,
            "seconds": round(self.seconds, 1),
        }


def refresh(
    data: str | Path,
    *,
    bank: Path | None = None,
    adapter: Path | None = None,
    output: Path | None = None,
    questions: list[str] | None = None,
    time_column: str | None = None,
    holdout: float = 0.2,
    replay: str | Path | None = None,
    replay_share: float = 0.0,
    metric: str | None = None,
    margin: float = DEFAULT_MARGIN,
    epochs: float | None = None,
    dry_run: bool = False,
    drift: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> RefreshReport:
    """Refresh a bank (`bank`) or one adapter (`adapter`, the candidate written to `output` when it passes).

    Returns the report: per adapter its rows, both scores, the 95% interval of the gain, the decision and why.
    """
    started = time.perf_counter()
    if (bank is None) == (adapter is None):
        raise PeftkitError("give --bank or --adapter (one of them)")
    if adapter is not None and not dry_run:
        if output is None:
            raise PeftkitError("--adapter: give --output for the refreshed adapter (or --dry-run)")
        check_writable_path(Path(output), folder=True)
        if Path(output).exists():
            raise PeftkitError(f"--output {output} exists; name a new folder")
    if not 0 <= replay_share <= 1:
        raise PeftkitError(f"--replay-share {replay_share}: a share between 0 and 1")
    source = str(data)
    frame = read_table(data).reset_index(drop=True)
    units = _units(bank, questions) if bank is not None else [_lone(Path(adapter))]
    for unit in units:  # every check before the first candidate trains
        check_rows(frame, source, unit.question, unit.manifest)
        if unit.segment_column is not None and unit.segment_column not in frame.columns:
            raise PeftkitError(
                f"{source}: question {unit.question!r} routes rows by column {unit.segment_column!r}, which the file "
                "lacks"
            )
    old = read_table(replay).reset_index(drop=True) if replay is not None and replay_share > 0 else None
    split = cut(frame, holdout=holdout, time_column=time_column, seed=seed, source=source)
    log.info("refresh: %d new rows; held out for the gate: %s", len(frame), split.how)
    report = RefreshReport(source, str(bank or adapter), split.how, dry_run, margin)
    with tempfile.TemporaryDirectory(prefix="peftkit-refresh-") as tmp:
        for unit in units:
            report.results.append(
                _refresh_unit(
                    unit,
                    split,
                    old,
                    replay_share,
                    Path(tmp),
                    metric,
                    margin,
                    epochs,
                    dry_run,
                    seed,
                    progress,
                    output,
                )
            )
    if drift and bank is not None:
        report.drift = _drift(frame, bank, questions)
    report.seconds = time.perf_counter() - started
    return report


def _units(bank: Path, questions: list[str] | None) -> list[Unit]:
    index, single = read_bank_index(bank)
    names = questions or list(index.questions)
    units = []
    for name in names:
        folder = question_folder(bank, None if single else name)
        file = read_bank_file(folder)
        by_adapter: dict[str, list[str]] = {}
        for value, adapter_name in file.segments.items():
            by_adapter.setdefault(adapter_name, []).append(value)
        for adapter_name, entry in file.adapters.items():
            path = folder / entry.path
            values = None if adapter_name == GLOBAL else by_adapter.get(adapter_name, [])
            units.append(
                Unit(name, adapter_name, path, read_manifest(path), folder, file.segment_column, values)
            )
    return units


def _lone(folder: Path) -> Unit:
    return Unit("default", folder.name, folder, read_manifest(folder), None)


def _refresh_unit(
    unit: Unit,
    split: Cut,
    old: pd.DataFrame | None,
    replay_share: float,
    tmp: Path,
    metric: str | None,
    margin: float,
    epochs: float | None,
    dry_run: bool,
    seed: int,
    progress: bool,
    output: Path | None,
) -> dict[str, Any]:
    train_rows, held_rows = unit.rows(split.train), unit.rows(split.held_out)
    if old is not None:
        replayed = (
            unit.rows(old).sample(frac=1.0, random_state=seed).head(int(len(train_rows) * replay_share))
        )
        train_rows = pd.concat([train_rows, replayed], ignore_index=True)
    result: dict[str, Any] = {
        "question": unit.question,
        "adapter": unit.adapter,
        "segments": unit.segment_values,
        "current_version": production(unit.question_folder, unit.adapter) if unit.question_folder else None,
        "train_rows": len(train_rows),
        "held_out_rows": len(held_rows),
    }
    texts, y, left_out = encoded(held_rows, unit.manifest)
    result["held_out_left_out"] = left_out
    if len(train_rows) < MIN_TRAIN_ROWS or len(y) < MIN_ROWS:
        result |= {
            "decision": "kept",
            "why": f"{len(train_rows)} new training rows and {len(y)} held-out rows (at least {MIN_TRAIN_ROWS} and "
            f"{MIN_ROWS} needed): no candidate",
        }
        log.info("refresh %s/%s: %s", unit.question, unit.adapter, result["why"])
        return result
    log.info(
        "refresh %s/%s: training a candidate on %d rows from %s",
        unit.question,
        unit.adapter,
        len(train_rows),
        unit.folder,
    )
    candidate = _train_candidate(unit, train_rows, tmp, epochs, progress)
    verdict = _judge(unit, candidate, texts, y, metric, margin, seed)
    result |= {
        "gate": verdict.to_json(),
        "why": verdict.why,
        "candidate_seconds": candidate.manifest.train.seconds,
    }
    log.info("refresh %s/%s: %s", unit.question, unit.adapter, verdict.why)
    if not verdict.promote:
        result["decision"] = "kept"
    elif dry_run:
        result["decision"] = "would promote (dry run)"
    elif unit.question_folder is None:
        with atomic_folder(Path(output)) as out:
            shutil.copytree(candidate.output, out, dirs_exist_ok=True)
        result |= {"decision": "promoted", "written": str(output)}
    else:
        reason = f"refresh: {verdict.why}"
        summary = {k: result[k] for k in ("train_rows", "held_out_rows")} | {"gate": verdict.to_json()}
        number = add_version(
            unit.question_folder, unit.adapter, candidate.output, reason=reason, report=summary
        )
        promote(unit.question_folder, unit.adapter, number, reason=reason, report=summary)
        result |= {"decision": "promoted", "new_version": number}
    return result


def _train_candidate(unit: Unit, rows: pd.DataFrame, tmp: Path, epochs: float | None, progress: bool):
    from peftkit.training.loop import train

    name = f"{unit.question}-{unit.adapter}"
    rows_file = tmp / f"{name}.csv"
    rows.to_csv(rows_file, index=False)
    try:
        cfg = RunConfig.model_validate(unit.manifest.config)
    except ValueError as exc:
        raise PeftkitError(
            f"adapter {unit.folder}: its stored config no longer validates ({str(exc).splitlines()[0]}); retrain it "
            "with peftkit train before refreshing"
        ) from None
    data = cfg.data.model_copy(
        update={
            "train": str(rows_file),
            "eval": None,
            "labels": unit.manifest.labels,
            "max_train_rows": None,
            "max_eval_rows": None,
        }
    )
    train_cfg = (
        cfg.train if epochs is None else cfg.train.model_copy(update={"epochs": epochs, "max_steps": -1})
    )
    cfg = cfg.model_copy(
        update={"data": data, "train": train_cfg, "segments": None, "output": str(tmp / name)}
    )
    return train(cfg, init_from=unit.folder, progress=progress)


def _judge(
    unit: Unit, candidate, texts: list[str], y, metric: str | None, margin: float, seed: int
) -> Verdict:
    from peftkit.inference.predictor import load_predictor

    current = load_predictor(unit.folder)
    return judge(
        unit.manifest.task,
        y,
        current.logits(texts),
        candidate.predictor.logits(texts),
        current_decision=unit.manifest.decision,
        candidate_decision=candidate.manifest.decision,
        metric_name=metric,
        margin=margin,
        seed=seed,
    )


def _drift(frame: pd.DataFrame, bank: Path, questions: list[str] | None) -> dict[str, Any] | None:
    """The new rows' inputs against each adapter's training profile (no scoring: the gate already scored)."""
    from peftkit.evaluation.drift import drift_report

    try:
        report = drift_report(frame, bank=bank, questions=questions, scores=False, source="the new rows")
    except PeftkitError as exc:  # adapters trained before profiles: the refresh still reports
        return {"error": str(exc)}
    return {"flags": report["flags"], "worst": report["worst"], "table": report["table"][:10]}
