"""Turn a compare's run records into a report: rows per (method, quantisation) with mean and 95% CI over seeds, a
ranking, a one-line recommendation that follows from the numbers, the goals checked against measured figures, a rich
table, Markdown, PNG charts and JSON.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.compare.plan import BASELINES, ComparePlan

# The metric that ranks methods, per task kind, and whether higher is better.
PRIMARY = {"classification": ("accuracy", True), "ordinal": ("accuracy", True), "regression": ("mae", False)}
TIE = 0.01  # rows whose primary metric is this close to the best's count as tied for the recommendation
CHARTS = ("quality_vs_params.png", "quality_vs_memory.png", "throughput.png")


@dataclass
class Stat:
    mean: float
    ci95: float  # half-width of the 95% t-interval over seeds; nan with one seed
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.ci95):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f}"


@dataclass
class Row:
    method: str
    quant: str
    baseline: bool
    seeds: list[int]
    metrics: dict[str, Stat]
    trainable_params: int
    trainable_percent: float
    adapter_bytes: int
    peak_bytes: Stat
    memory_kind: str  # cpu_peak_rss or cuda_max_allocated: the 8-bit goal's limit depends on it
    samples_per_second: Stat
    real_tokens_per_second: Stat
    padding_share: float
    real_flops_share: Stat
    computed_flops_share: Stat
    best_flops_share: (
        Stat  # real-token FLOP/s against the machine's best native dtype's peak (its own if older)
    )
    best_dtype: str | None  # that dtype, when it differs from the run's own; None when they are the same
    latency_ms_p50: Stat
    throughput_rows_per_second: Stat
    worst_segment: dict[str, Any] | None = None
    segments: dict[str, Stat] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}" + ("" if self.quant == "none" else f" ({self.quant})")


def stat(values: list[float]) -> Stat:
    from scipy import stats

    arr = np.asarray(values, dtype=float)
    n = len(arr)
    if n < 2:
        return Stat(float(arr.mean()) if n else float("nan"), float("nan"), n)
    half = float(stats.t.ppf(0.975, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return Stat(float(arr.mean()), half, n)


def build_rows(records: list[dict[str, Any]]) -> list[Row]:
    """One row per (method, quantisation), seeds aggregated."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["key"]["method"], r["key"]["quant"])].append(r)
    rows = []
    for (method, quant), runs in groups.items():
        runs.sort(key=lambda r: r["key"]["seed"])
        names = [k for k in runs[0]["metrics"] if all(k in r["metrics"] for r in runs)]
        seg_names = sorted(set.intersection(*(set(r.get("segments", {})) for r in runs))) if runs else []
        primary = PRIMARY[runs[0]["task"]][0]
        segments = {s: stat([r["segments"][s][primary] for r in runs]) for s in seg_names}
        rows.append(
            Row(
                method=method,
                quant=quant,
                baseline=bool(runs[0]["baseline"]),
                seeds=[r["key"]["seed"] for r in runs],
                metrics={k: stat([r["metrics"][k] for r in runs]) for k in names},
                trainable_params=int(np.mean([r["trainable_params"] for r in runs])),
                trainable_percent=float(np.mean([r["trainable_percent"] for r in runs])),
                adapter_bytes=int(np.mean([r["adapter_bytes"] for r in runs])),
                peak_bytes=stat([r["memory"]["peak_bytes"] for r in runs]),
                memory_kind=runs[0]["memory"]["kind"],
                samples_per_second=stat([r["train"]["samples_per_second"] for r in runs]),
                real_tokens_per_second=stat([r["train"]["real_tokens_per_second"] for r in runs]),
                padding_share=float(np.mean([r["train"]["padding_share"] for r in runs])),
                real_flops_share=stat([r["flops"]["real_share_of_peak"] for r in runs]),
                computed_flops_share=stat([r["flops"]["computed_share_of_peak"] for r in runs]),
                best_flops_share=stat([_best_share(r["flops"]) for r in runs]),
                best_dtype=_best_dtype(runs[0]["flops"]),
                latency_ms_p50=stat([r["inference"]["latency_ms_p50"] for r in runs]),
                throughput_rows_per_second=stat([r["inference"]["throughput_rows_per_second"] for r in runs]),
                segments=segments,
                worst_segment=_worst(segments, PRIMARY[runs[0]["task"]][1]),
            )
        )
    return rows


def _worst(segments: dict[str, Stat], higher: bool) -> dict[str, Any] | None:
    if not segments:
        return None
    name = (min if higher else max)(segments, key=lambda s: segments[s].mean)
    return {"segment": name, "mean": segments[name].mean}


def rank(rows: list[Row], task: str) -> list[Row]:
    metric, higher = PRIMARY[task]
    return sorted(rows, key=lambda r: -r.metrics[metric].mean if higher else r.metrics[metric].mean)


def learned(row: Row, task: str, majority: float | None) -> bool:
    """Whether ``row`` beats always answering the majority class by more than the tie margin (1 point).

    A row that does not has learned nothing usable at this budget, and its rank among other such rows is noise.
    """
    metric, higher = PRIMARY[task]
    if majority is None:
        return True
    mean = row.metrics[metric].mean
    return mean > majority + TIE if higher else mean < majority - TIE


def recommend(rows: list[Row], task: str, majority: float | None = None) -> str:
    """One plain sentence from the numbers: the fastest-training non-baseline row tied with the best.

    Tied = its mean is within 1 point (0.01) of the best mean: the yardstick the goals use. With few seeds the 95%
    interval is wider than that (t = 12.7 at two seeds), so the interval is shown, not used to declare ties. When no
    row beats the majority class, there is nothing to choose between on quality, and the sentence says so.
    """
    metric, higher = PRIMARY[task]
    ranked = [r for r in rank(rows, task) if not r.baseline]
    if not ranked:
        return "No peftkit runs finished; nothing to recommend."
    best = ranked[0]
    if not learned(best, task, majority):
        return (
            f"No method is recommended: none beat the majority-class {metric} ({majority:.3f}) by more than "
            f"{TIE:.2f} (best: {best.name}, {best.metrics[metric].mean:.3f}), so at this budget the quality columns "
            "do not separate the methods; raise the budget (--max-train-rows, --epochs) before choosing. "
            "The speed and memory columns stand as measured."
        )
    tol = TIE
    tied = [r for r in ranked if abs(r.metrics[metric].mean - best.metrics[metric].mean) <= tol]
    pick = max(tied, key=lambda r: (r.samples_per_second.mean, -r.trainable_params))
    m = pick.metrics[metric]
    parts = [
        f"Use **{pick.name}**: {metric} {m.text()}",
        "the best"
        if pick is best
        else f"within {tol:.3f} of the best ({best.name}, {best.metrics[metric].mean:.3f})",
        f"with {pick.trainable_percent:.2f}% of the parameters trained, a {_mb(pick.adapter_bytes)} folder and "
        f"{pick.samples_per_second.mean:.1f} training samples/s",
    ]
    slower = [r for r in tied if r is not pick]
    if slower:
        fastest_other = max(slower, key=lambda r: r.samples_per_second.mean)
        parts.append(
            f"{pick.samples_per_second.mean / fastest_other.samples_per_second.mean:.2f}× the speed of the next "
            f"tied row ({fastest_other.name})"
        )
    return ", ".join(parts) + "."


@dataclass
class Goal:
    goal: str
    target: str
    measured: str
    met: bool | None  # None: not judged (the reference itself learned nothing)


def goals(rows: list[Row], task: str, majority: float | None = None) -> list[Goal]:
    """The issue's goals, each checked against the measured rows (only where the needed rows exist).

    "Within 1 point of full fine-tuning" is not judged when full fine-tuning itself did not beat the majority class:
    matching a model that learned nothing says nothing about the method.
    """
    metric, higher = PRIMARY[task]
    by = {(r.method, r.quant): r for r in rows}
    out = []
    lora, full = by.get(("lora", "none")), by.get(("full", "none"))
    for base, target in (("peft+trainer", 1.3), ("tutorial", 2.0)):
        if lora and (b := by.get((base, "none"))):
            ratio = lora.samples_per_second.mean / b.samples_per_second.mean
            diff = lora.metrics[metric].mean - b.metrics[metric].mean
            out.append(
                Goal(
                    f"LoRA training samples/s vs {base}",
                    f"≥ {target}×",
                    f"{ratio:.2f}× ({lora.samples_per_second.mean:.1f} vs {b.samples_per_second.mean:.1f}); "
                    f"{metric} {diff:+.3f}",
                    ratio >= target,
                )
            )
    if lora:
        share = lora.real_flops_share.mean
        out.append(
            Goal(
                "LoRA FLOP/s on real tokens vs measured matmul peak",
                "≥ 70%",
                f"{100 * share:.0f}% ({100 * lora.computed_flops_share.mean:.0f}% counting padding)"
                + (
                    f"; {100 * lora.best_flops_share.mean:.0f}% of the {lora.best_dtype} peak"
                    if lora.best_dtype
                    else ""
                ),
                share >= 0.70,
            )
        )
    for name in ("lora", "adalora"):
        if full and (r := by.get((name, "none"))):
            gap = full.metrics[metric].mean - r.metrics[metric].mean  # how far the method is behind full
            gap = gap if higher else -gap  # an error metric (MAE): behind means higher
            measured = (
                f"{r.metrics[metric].mean - full.metrics[metric].mean:+.3f} {metric} "
                f"({r.metrics[metric].mean:.3f} vs {full.metrics[metric].mean:.3f}), "
                f"{r.trainable_percent:.2f}% trainable"
            )
            judged = learned(full, task, majority)
            if not judged:
                measured += f"; full fine-tuning did not beat the majority class ({majority:.3f})"
            out.append(
                Goal(
                    f"{name} vs full fine-tuning",
                    "within 1 point, ≤ 1% trainable",
                    measured,
                    (gap <= 0.01 and r.trainable_percent <= 1.0) if judged else None,
                )
            )
    for r in rows:
        if r.quant == "8bit" and (ref := by.get((r.method, "none"))):
            ratio = r.peak_bytes.mean / ref.peak_bytes.mean
            gpu = r.memory_kind == "cuda_max_allocated"
            limit = 0.55 if gpu else 0.5
            out.append(
                Goal(
                    f"{r.method} 8-bit peak memory vs unquantised",
                    f"≤ {limit}× ({'GPU bf16' if gpu else 'CPU fp32'})",
                    f"{ratio:.2f}× ({_mb(r.peak_bytes.mean)} vs {_mb(ref.peak_bytes.mean)})",
                    ratio <= limit,
                )
            )
    return out


def _mb(n: float) -> str:
    """Decimal units, as `peftkit doctor` and `du --si` print them."""
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


# --- rendering ------------------------------------------------------------------------------------------------


def _best_share(flops: dict) -> float:
    # Records written before the best-dtype peak was measured hold only their own dtype's share.
    return flops.get("real_share_of_best_peak", flops["real_share_of_peak"])


def _best_dtype(flops: dict) -> str | None:
    best = flops.get("best_peak", {}).get("dtype")
    return best if best and best != flops.get("matmul_peak", {}).get("dtype") else None


def columns(task: str) -> list[str]:
    return [
        "method",
        f"{PRIMARY[task][0]} (95% CI)",
        "trained",
        "folder",
        "peak mem",
        "train samples/s",
        "real tok/s",
        "FLOP/s of peak: real (all); of best dtype",
        "p50 ms",
        "infer rows/s",
    ]


def table_rows(rows: list[Row], task: str) -> list[list[str]]:
    metric, _ = PRIMARY[task]
    out = []
    for r in rank(rows, task):
        out.append(
            [
                r.name + (" [baseline]" if r.baseline else ""),
                r.metrics[metric].text(),
                f"{r.trainable_percent:.2f}%",
                _mb(r.adapter_bytes),
                _mb(r.peak_bytes.mean),
                f"{r.samples_per_second.mean:.1f}",
                f"{r.real_tokens_per_second.mean:.0f}",
                f"{100 * r.real_flops_share.mean:.0f}% ({100 * r.computed_flops_share.mean:.0f}%)"
                + (f"; {100 * r.best_flops_share.mean:.0f}% of {r.best_dtype}" if r.best_dtype else ""),
                f"{r.latency_ms_p50.mean:.1f}",
                f"{r.throughput_rows_per_second.mean:.0f}",
            ]
        )
    return out


def report_data(plan: ComparePlan, records: list[dict], failures: list[dict]) -> dict[str, Any]:
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


def print_table(data: dict, rows: list[Row], console) -> None:
    from rich.table import Table

    table = Table(title=f"peftkit compare: {data['recipe']} on {data['model']} ({data['runs']} runs)")
    for i, c in enumerate(columns(data["task"])):
        table.add_column(c, justify="left" if i < 2 else "right")
    for cells in table_rows(rows, data["task"]):
        table.add_row(*cells)
    console.print(table)
    console.print(data["recommendation"].replace("**", ""), highlight=False)
    for g in data["goals"]:
        mark = {True: "[green]met[/]", False: "[red]short[/]", None: "[yellow]not judged[/]"}[g["met"]]
        console.print(f"  goal {g['goal']} ({g['target']}): {g['measured']} {mark}", highlight=False)


def markdown(data: dict, rows: list[Row], commands: list[str]) -> str:
    task, metric = data["task"], data["primary_metric"]
    b = data["budget"]
    budget = (
        f"{b['max_steps']} steps"
        if b.get("max_steps", -1) and b["max_steps"] > 0
        else f"{b['epochs']} epochs"
    )
    seeds = sorted({s for r in rows for s in r.seeds})
    dev = data.get("device") or {}
    lines = [
        f"# peftkit compare: `{data['recipe']}` on `{data['model']}`",
        "",
        f"Task: {task}, ranked by {metric} on {data['rows_data'] and data['rows_data']['eval']} held-out rows "
        f"(mean ± 95% CI over seeds {', '.join(map(str, seeds))}). Budget: {budget}, batch {b['batch_size']}, "
        f"max_length {data['max_length']}, {data['rows_data'] and data['rows_data']['train']} training rows. "
        + (f"Majority-class {metric}: {data['majority']:.3f}. " if data.get("majority") is not None else "")
        + f"Device: {dev.get('device', '?')}"
        + (f" ({dev['gpu']})" if dev.get("gpu") else f", {dev.get('threads', '?')} threads")
        + (
            f"; measured {data.get('matmul_peak_dtype') or 'float32'} matmul peak "
            f"{data['matmul_peak_flops'] / 1e9:.0f} GFLOP/s"
            if data["matmul_peak_flops"]
            else ""
        )
        + (
            f" (the machine's best native dtype, {best['dtype']}: {best['flops'] / 1e9:.0f} GFLOP/s)"
            if (best := data.get("best_peak")) and best["dtype"] != data.get("matmul_peak_dtype")
            else ""
        )
        + ".",
        "",
        "| " + " | ".join(columns(task)) + " |",
        "|" + "|".join("---" for _ in columns(task)) + "|",
    ]
    lines += [
        "| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in table_rows(rows, task)
    ]
    lines += ["", f"**Recommendation.** {data['recommendation']}", ""]
    if data["goals"]:
        lines += ["## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
        for g in data["goals"]:
            lines.append(f"| {g['goal']} | {g['target']} | {g['measured']} | {_yes(g['met'])} |")
        lines.append("")
    seg_rows = [r for r in rank(rows, task) if r.segments]
    if seg_rows:
        names = list(seg_rows[0].segments)
        lines += [f"## {metric} per segment", "", "| method | " + " | ".join(names) + " | worst |"]
        lines.append("|---|" + "---|" * (len(names) + 1))
        for r in seg_rows:
            cells = [r.segments[s].text() if s in r.segments else "-" for s in names]
            lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.worst_segment['segment']} |")
        lines.append("")
    lines += [
        "## Charts",
        "",
        *[f"![{c.removesuffix('.png')}](charts/{c})" for c in CHARTS],
        "",
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
    if data["failures"]:
        lines += ["", "## Failed runs", ""] + [f"- `{f['key']}`: {f['error']}" for f in data["failures"]]
    if commands:
        lines += ["", "## Commands", "", "```", *commands, "```"]
    return "\n".join(lines) + "\n"


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not judged"}[met]


def charts(rows: list[Row], task: str, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, _ = PRIMARY[task]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, xlabel, xs, log in (
        (CHARTS[0], "trainable parameters", [r.trainable_params for r in rows], True),
        (CHARTS[1], "peak memory (MB)", [r.peak_bytes.mean / 2**20 for r in rows], False),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r, x in zip(rows, xs):
            y = r.metrics[metric]
            ax.errorbar(
                x, y.mean, yerr=0 if math.isnan(y.ci95) else y.ci95, fmt="s" if r.baseline else "o", capsize=3
            )
            ax.annotate(r.name, (x, y.mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    ordered = rank(rows, task)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, attr, label in (
        (axes[0], "samples_per_second", "training samples/s"),
        (axes[1], "throughput_rows_per_second", "inference rows/s"),
    ):
        means = [getattr(r, attr).mean for r in ordered]
        errs = [0 if math.isnan(getattr(r, attr).ci95) else getattr(r, attr).ci95 for r in ordered]
        ax.barh(
            [r.name for r in ordered],
            means,
            xerr=errs,
            color=["grey" if r.baseline else "tab:blue" for r in ordered],
        )
        ax.invert_yaxis()
        ax.set_xlabel(label)
    fig.tight_layout()
    fig.savefig(folder / CHARTS[2], dpi=110)
    plt.close(fig)
    paths.append(folder / CHARTS[2])
    return paths
