"""`peftkit compare`: every method on the same rows and budget, over seeds, with quality, cost and speed.

    plan = ComparePlan(recipe=..., config=..., methods=["lora", "full"], quants=["none"], seeds=[0, 1, 2])
    records = run_compare(plan, Path("results/reviews"))   # resumable: finished runs are kept
    render(Path("results/reviews"))                         # report.md, report.json, charts/*.png

or, from a recipe as the command line gives it, `compare_recipe(CompareRequest(recipe=..., ...))`.

Modules: `plan` (what to run), `request` (a recipe and flags to a plan, then runs and report), `runner` (runs the
plan), `worker` (one run, one process), `measure` (FLOP/s, memory, latency), `baselines` (the hand-written rows),
`record` (the run file's fields), `report` (aggregation, ranking, recommendation, goals), `table`, `markdown`,
`charts` and `report_files` (the report's table, report.md, PNGs, report.json).
"""

from __future__ import annotations

from peftkit.compare.plan import BASELINES, ComparePlan, check_methods
from peftkit.compare.report_files import render
from peftkit.compare.request import CompareInterrupted, CompareRequest, compare_recipe
from peftkit.compare.runner import load_runs, run_compare

__all__ = [
    "BASELINES",
    "CompareInterrupted",
    "CompareRequest",
    "ComparePlan",
    "check_methods",
    "compare_recipe",
    "load_runs",
    "render",
    "run_compare",
]
