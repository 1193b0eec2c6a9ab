"""report.md: the ranked table, the recommendation, the goals, the per-segment table, the charts and how the
figures are made, with the commands that made them."""

from __future__ import annotations

from typing import Any

from peftkit.artifacts.names import COMPARE_CHARTS
from peftkit.compare.charts import CHARTS
from peftkit.compare.plan import BASELINES
from peftkit.compare.report import Row, rank
from peftkit.compare.table import columns, table_rows

MET = {True: "yes", False: "**no**", None: "not judged"}

HOW = [
    "## How the figures are made",
    "",
    "- Each run is its own process; peak memory is that process's peak from start to the end of training, "
    "loading included: peak RSS on CPU, CUDA max allocated on GPU (the run files hold the load and training "
    "peaks apart).",
    "- tokens/s count real tokens (attention mask), padding excluded; FLOP/s = factor × N × tokens / train "
    "seconds, N = the base's non-embedding parameters, factor 4 with a frozen base (forward + backward to the "
    "activations), +2 when the base trains, +2 with gradient checkpointing (docs/compare.md).",
    "- Baselines: " + "; ".join(f"`{k}`: {v}" for k, v in BASELINES.items()) + ".",
]


def markdown(data: dict[str, Any], rows: list[Row], commands: list[str]) -> str:
    """The text of report.md from the report's data and rows."""
    task = data["task"]
    lines = [f"# peftkit compare: `{data['recipe']}` on `{data['model']}`", "", _intro(data, rows), ""]
    lines += ["| " + " | ".join(columns(task)) + " |", "|" + "|".join("---" for _ in columns(task)) + "|"]
    lines += [
        "| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in table_rows(rows, task)
    ]
    lines += ["", f"**Recommendation.** {data['recommendation']}", ""]
    lines += _goals(data["goals"]) + _segments(rank(rows, task), data["primary_metric"])
    lines += [
        "## Charts",
        "",
        *[f"![{c.removesuffix('.png')}]({COMPARE_CHARTS}/{c})" for c in CHARTS],
        "",
        *HOW,
    ]
    if data["failures"]:
        lines += ["", "## Failed runs", ""] + [f"- `{f['key']}`: {f['error']}" for f in data["failures"]]
    if commands:
        lines += ["", "## Commands", "", "```", *commands, "```"]
    return "\n".join(lines) + "\n"


def _intro(data: dict[str, Any], rows: list[Row]) -> str:
    """The paragraph under the title: task, rows, seeds, budget, majority class, device and its matmul peaks."""
    metric, b, counts = data["primary_metric"], data["budget"], data["rows_data"]
    budget = (
        f"{b['max_steps']} steps"
        if b.get("max_steps", -1) and b["max_steps"] > 0
        else f"{b['epochs']} epochs"
    )
    seeds = sorted({s for r in rows for s in r.seeds})
    dev = data.get("device") or {}
    text = (
        f"Task: {data['task']}, ranked by {metric} on {counts and counts['eval']} held-out rows "
        f"(mean ± 95% CI over seeds {', '.join(map(str, seeds))}). Budget: {budget}, batch {b['batch_size']}, "
        f"max_length {data['max_length']}, {counts and counts['train']} training rows. "
    )
    if data.get("majority") is not None:
        text += f"Majority-class {metric}: {data['majority']:.3f}. "
    text += f"Device: {dev.get('device', '?')}"
    text += f" ({dev['gpu']})" if dev.get("gpu") else f", {dev.get('threads', '?')} threads"
    if data["matmul_peak_flops"]:
        text += (
            f"; measured {data.get('matmul_peak_dtype') or 'float32'} matmul peak "
            f"{data['matmul_peak_flops'] / 1e9:.0f} GFLOP/s"
        )
    if (best := data.get("best_peak")) and best["dtype"] != data.get("matmul_peak_dtype"):
        text += f" (the machine's best native dtype, {best['dtype']}: {best['flops'] / 1e9:.0f} GFLOP/s)"
    return text + "."


def _goals(goals: list[dict[str, Any]]) -> list[str]:
    if not goals:
        return []
    lines = ["## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {MET[g['met']]} |" for g in goals]
    return lines + [""]


def _segments(ranked: list[Row], metric: str) -> list[str]:
    """The primary metric per segment, one line per row that has segments, with its worst segment."""
    seg_rows = [r for r in ranked if r.segments]
    if not seg_rows:
        return []
    names = list(seg_rows[0].segments)
    lines = [f"## {metric} per segment", "", "| method | " + " | ".join(names) + " | worst |"]
    lines.append("|---|" + "---|" * (len(names) + 1))
    for r in seg_rows:
        cells = [r.segments[s].text() if s in r.segments else "-" for s in names]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.worst_segment['segment']} |")
    return lines + [""]
