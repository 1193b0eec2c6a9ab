"""`peftkit compare`: every method on the same rows and budget, over seeds, with quality, cost and speed.

    plan = ComparePlan(recipe=..., config=..., methods=["lora", "full"], quants=["none"], seeds=[0, 1, 2])
    records = run_compare(plan, Path("results/reviews"))   # resumable: finished runs are kept
    render(Path("results/reviews"))                         # report.md, report.json, charts/*.png

Modules: `plan` (what to run), `worker` (one run, one process), `measure` (FLOP/s, memory, latency), `baselines`
(the hand-written rows), `runner` (runs the plan), `report` (aggregation, ranking, charts, Markdown).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peftkit.artifacts.io import replace_folder, write_text_atomic
from peftkit.compare.plan import BASELINES, ComparePlan, check_methods, read_plan
from peftkit.compare.runner import load_failures, load_runs, run_compare
from peftkit.errors import PeftkitError

REPORT_MD, REPORT_JSON = "report.md", "report.json"


def render(output: Path, *, commands: list[str] | None = None, console=None) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and ``charts/`` from the runs stored in `output`; returns the report.

    Each file is written beside its final name and renamed into place, so a reader never sees half a report.
    """
    from peftkit.compare import report

    plan = read_plan(output)
    records = load_runs(output)
    if not records:
        raise PeftkitError(
            f"{output}: no finished runs yet; run peftkit compare --recipe ... --output {output}"
        )
    rows = report.build_rows(records)
    data = report.report_data(plan, records, load_failures(output))
    stored = output / "commands.txt"
    history = stored.read_text().splitlines() if stored.is_file() else []
    for c in commands or []:
        if c not in history:
            history.append(c)
    write_text_atomic(stored, "\n".join(history) + "\n")
    data["commands"] = history
    tmp = Path(tempfile.mkdtemp(prefix=".charts-", dir=output))
    try:
        report.charts(rows, data["task"], tmp)
        replace_folder(tmp, output / "charts")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_text_atomic(output / REPORT_MD, report.markdown(data, rows, history))
    write_text_atomic(
        output / REPORT_JSON, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    if console is not None:
        report.print_table(data, rows, console)
    return data


__all__ = ["BASELINES", "ComparePlan", "check_methods", "load_runs", "render", "run_compare"]
