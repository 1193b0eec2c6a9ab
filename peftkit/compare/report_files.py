"""A compare folder's report: ``report.json`` (the data), ``report.md``, ``charts/`` and ``commands.txt``.

Each file is written beside its final name and renamed into place, so a reader never sees half a report.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.io import atomic_folder, write_json, write_text_atomic
from peftkit.artifacts.names import COMPARE_CHARTS, COMPARE_COMMANDS, REPORT_JSON, REPORT_MD
from peftkit.compare.charts import charts
from peftkit.compare.markdown import markdown
from peftkit.compare.plan import ComparePlan, read_plan
from peftkit.compare.report import PRIMARY, build_rows, goals, rank, recommend
from peftkit.compare.runner import load_failures, load_runs
from peftkit.compare.table import print_table
from peftkit.errors import PeftkitError


def render(output: Path, *, commands: list[str] | None = None, console=None) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``charts/`` from the runs stored in `output`; returns the report.

    `commands` are added to the folder's ``commands.txt``; `console` (rich), when given, gets the ranked table.
    """
    plan = read_plan(output)
    records = load_runs(output)
    if not records:
        raise PeftkitError(
            f"{output}: no finished runs yet; run peftkit compare --recipe ... --output {output}"
        )
    rows = build_rows(records)
    data = report_data(plan, records, load_failures(output))
    data["commands"] = history = _add_commands(output / COMPARE_COMMANDS, commands or [])
    with atomic_folder(output / COMPARE_CHARTS) as tmp:
        charts(rows, data["task"], tmp)
    write_text_atomic(output / REPORT_MD, markdown(data, rows, history))
    write_json(output / REPORT_JSON, data)
    if console is not None:
        print_table(data, rows, console)
    return data


def report_data(plan: ComparePlan, records: list[dict], failures: list[dict]) -> dict[str, Any]:
    """The report as data (``report.json``, and what ``--json`` prints)."""
    task = plan.config["task"]
    rows = build_rows(records)
    first = records[0] if records else {}
    majority = first.get("metrics", {}).get(f"majority_{PRIMARY[task][0]}")
    return {
        "recipe": plan.recipe,
        "task": task,
        "primary_metric": PRIMARY[task][0],
        "rows_data": first.get("rows"),
        "budget": {k: plan.config["train"].get(k) for k in ("epochs", "max_steps", "batch_size")},
        "max_length": plan.config["data"]["max_length"],
        "model": plan.config["model"]["name"],
        "device": first.get("device"),
        "versions": first.get("versions"),
        "runs": len(records),
        "majority": majority,
        "failures": failures,
        "ranking": [asdict(r) | {"name": r.name} for r in rank(rows, task)],
        "recommendation": recommend(rows, task, majority),
        "goals": [asdict(g) for g in goals(rows, task, majority)],
        "matmul_peak_flops": float(np.median([r["flops"]["matmul_peak_per_second"] for r in records]))
        if records
        else None,
        "matmul_peak_dtype": first.get("flops", {}).get("matmul_peak", {}).get("dtype"),
        "best_peak": first.get("flops", {}).get("best_peak"),
    }


def _add_commands(stored: Path, commands: list[str]) -> list[str]:
    """The folder's command history with `commands` added (each once), written back; returns the history."""
    history = stored.read_text().splitlines() if stored.is_file() else []
    history += [c for c in dict.fromkeys(commands) if c not in history]
    write_text_atomic(stored, "\n".join(history) + "\n")
    return history
