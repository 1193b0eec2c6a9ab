"""Run a compare plan: each (method, quantisation, seed) in its own process, one result file per run, resumable.

<output>/compare.json            the plan (recipe config, methods, quantisations, seeds)
<output>/runs/<id>.json          one finished run each, never overwritten
<output>/runs/<id>.failed.json   why a run failed (retried by the next compare)
<output>/logs/<id>.log           the run's own output
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.artifacts.io import write_json
from peftkit.artifacts.names import COMPARE_FAILED, COMPARE_LOGS, COMPARE_RUNS
from peftkit.compare.plan import ComparePlan, RunKey, write_or_check_plan
from peftkit.errors import PeftkitError


def run_compare(
    plan: ComparePlan, output: Path, *, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Make every run of `plan` that `output` does not hold yet; returns all finished run records (earlier
    compares into the same folder included: a second compare can add 8-bit runs of one method to the grid).

    A run that fails is recorded in ``runs/<id>.failed.json`` with its last error line and skipped; the others go
    on. Interrupting (Ctrl-C) loses only the run in progress.
    """
    keys, skipped = plan.runs()
    for key in keys:  # every run's config is valid before the first one starts, not after an hour
        if not key.is_baseline:
            plan.run_config(key)
    write_or_check_plan(plan, output)
    for note in skipped:
        say(f"skipped: {note}")
    (output / COMPARE_RUNS).mkdir(exist_ok=True)
    (output / COMPARE_LOGS).mkdir(exist_ok=True)
    split_seed = plan.config["train"]["seed"]
    todo = [k for k in keys if not run_file(output, k).is_file()]
    if len(todo) < len(keys):
        say(f"resuming: {len(keys) - len(todo)} of {len(keys)} runs already done in {output / COMPARE_RUNS}")
    for i, key in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {key.method} quant={key.quant} seed={key.seed} ...")
        started = time.perf_counter()
        error = _run_one(plan, key, split_seed, output)
        took = time.perf_counter() - started
        if error:
            say(
                f"[{i}/{len(todo)}] {key.id} FAILED after {took:.0f}s: {error} (log: {output / COMPARE_LOGS / key.id}.log)"
            )
        else:
            record = json.loads(run_file(output, key).read_text())
            shown = ", ".join(f"{k} {v:.3f}" for k, v in list(record["metrics"].items())[:2])
            say(f"[{i}/{len(todo)}] {key.id} done in {took:.0f}s: {shown}")
    return load_runs(output)


def _run_one(plan: ComparePlan, key: RunKey, split_seed: int, output: Path) -> str | None:
    """Run `key` in a child process; returns None on success, else the error's last line."""
    config = (
        json.loads(json.dumps(plan.config)) | {"segments": None}
        if key.is_baseline
        else plan.run_config(key).model_dump(mode="json")
    )
    if key.is_baseline:
        config["train"]["seed"] = key.seed
    job = {
        "key": {"method": key.method, "quant": key.quant, "seed": key.seed},
        "config": config,
        "split_seed": split_seed,
        "segment_column": plan.segment_column,
        "out": str(run_file(output, key)),
    }
    failed = output / COMPARE_RUNS / f"{key.id}{COMPARE_FAILED}"
    log = output / COMPARE_LOGS / f"{key.id}.log"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        with log.open("w") as out:
            # The log gets the child's output and any traceback; the terminal gets its last line.
            done = subprocess.run(
                [sys.executable, "-m", "peftkit.compare.worker", fh.name], stdout=out, stderr=out
            )
    finally:
        os.unlink(fh.name)
    if done.returncode == 0:
        failed.unlink(missing_ok=True)
        return None
    if done.returncode == -signal.SIGINT:
        raise KeyboardInterrupt
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    error = lines[-1] if lines else f"exit {done.returncode}"
    write_json(failed, {"key": job["key"], "error": error, "exit": done.returncode})
    return error


def run_file(output: Path, key: RunKey) -> Path:
    """Where the finished run `key` of the compare in `output` is recorded."""
    return output / COMPARE_RUNS / f"{key.id}.json"


def load_runs(output: Path) -> list[dict[str, Any]]:
    """Every finished run record under `output`, in file-name order."""
    folder = output / COMPARE_RUNS
    if not folder.is_dir():
        raise PeftkitError(f"{output}: no {COMPARE_RUNS}/ folder; is this a peftkit compare --output folder?")
    return [_read(p) for p in sorted(folder.glob("*.json")) if not p.name.endswith(COMPARE_FAILED)]


def load_failures(output: Path) -> list[dict[str, Any]]:
    """Every failed run's note under `output`: its key, last error line and exit status."""
    return [_read(p) for p in sorted((output / COMPARE_RUNS).glob(f"*{COMPARE_FAILED}"))]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PeftkitError(f"{path}: not valid JSON ({exc}); delete it to re-run that run") from None
