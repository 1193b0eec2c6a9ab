"""Judge a compare's run records: rows per (method, quantisation) with mean and 95% CI over seeds, a ranking, a
one-line recommendation that follows from the numbers, and the goals checked against measured figures.

What shows them: `table` (the ranked table), `markdown` (report.md), `charts` (PNG), `report_files` (report.json
and writing the report files).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftkit.tasks import TASKS

# The metric that ranks methods, per task kind, and whether higher is better: the task's primary metric
# (`peftkit.tasks`), the one that also picks each run's best epoch.
PRIMARY = {name: (task.primary.name, task.primary.higher_is_better) for name, task in TASKS.items()}
TIE = 0.01  # rows whose primary metric is this close to the best's count as tied for the recommendation


@dataclass
class Stat:
    """A figure over seeds: its mean, the half-width of its 95% interval and the number of seeds."""

    mean: float
    ci95: float  # half-width of the 95% t-interval over seeds; nan with one seed
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.ci95):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f}"


@dataclass
class Row:
    """One (method, quantisation) of the comparison, its figures aggregated over seeds."""

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
    """Mean and 95% t-interval half-width of `values` (nan below two values)."""
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
    return [_row(method, quant, runs) for (method, quant), runs in groups.items()]


def _row(method: str, quant: str, runs: list[dict[str, Any]]) -> Row:
    runs.sort(key=lambda r: r["key"]["seed"])
    names = [k for k in runs[0]["metrics"] if all(k in r["metrics"] for r in runs)]
    seg_names = sorted(set.intersection(*(set(r.get("segments", {})) for r in runs))) if runs else []
    primary, higher = PRIMARY[runs[0]["task"]]
    segments = {s: stat([r["segments"][s][primary] for r in runs]) for s in seg_names}

    def over_seeds(part: str, name: str) -> Stat:
        return stat([r[part][name] for r in runs])

    return Row(
        method=method,
        quant=quant,
        baseline=bool(runs[0]["baseline"]),
        seeds=[r["key"]["seed"] for r in runs],
        metrics={k: over_seeds("metrics", k) for k in names},
        trainable_params=int(np.mean([r["trainable_params"] for r in runs])),
        trainable_percent=float(np.mean([r["trainable_percent"] for r in runs])),
        adapter_bytes=int(np.mean([r["adapter_bytes"] for r in runs])),
        peak_bytes=over_seeds("memory", "peak_bytes"),
        memory_kind=runs[0]["memory"]["kind"],
        samples_per_second=over_seeds("train", "samples_per_second"),
        real_tokens_per_second=over_seeds("train", "real_tokens_per_second"),
        padding_share=float(np.mean([r["train"]["padding_share"] for r in runs])),
        real_flops_share=over_seeds("flops", "real_share_of_peak"),
        computed_flops_share=over_seeds("flops", "computed_share_of_peak"),
        best_flops_share=stat([_best_share(r["flops"]) for r in runs]),
        best_dtype=_best_dtype(runs[0]["flops"]),
        latency_ms_p50=over_seeds("inference", "latency_ms_p50"),
        throughput_rows_per_second=over_seeds("inference", "throughput_rows_per_second"),
        segments=segments,
        worst_segment=_worst(segments, higher),
    )


def _best_share(flops: dict) -> float:
    # Records written before the best-dtype peak was measured hold only their own dtype's share.
    return flops.get("real_share_of_best_peak", flops["real_share_of_peak"])


def _best_dtype(flops: dict) -> str | None:
    best = flops.get("best_peak", {}).get("dtype")
    return best if best and best != flops.get("matmul_peak", {}).get("dtype") else None


def _worst(segments: dict[str, Stat], higher: bool) -> dict[str, Any] | None:
    if not segments:
        return None
    name = (min if higher else max)(segments, key=lambda s: segments[s].mean)
    return {"segment": name, "mean": segments[name].mean}


def rank(rows: list[Row], task: str) -> list[Row]:
    """`rows` best first by the task's primary metric."""
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
        f"with {pick.trainable_percent:.2f}% of the parameters trained, a {mb(pick.adapter_bytes)} folder and "
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
    """One of the issue's goals: what it asks, what was measured, and whether that meets it."""

    goal: str
    target: str
    measured: str
    met: bool | None  # None: not judged (the reference itself learned nothing)


SPEED_TARGETS = {"peft+trainer": 1.3, "tutorial": 2.0}  # LoRA's training samples/s over each baseline's


def goals(rows: list[Row], task: str, majority: float | None = None) -> list[Goal]:
    """The issue's goals, each checked against the measured rows (only where the needed rows exist)."""
    metric = PRIMARY[task][0]
    by = {(r.method, r.quant): r for r in rows}
    lora = by.get(("lora", "none"))
    out = []
    if lora:
        out += [_speed_goal(lora, b, metric) for base in SPEED_TARGETS if (b := by.get((base, "none")))]
        out.append(_flops_goal(lora))
    if full := by.get(("full", "none")):
        out += [
            _quality_goal(r, full, task, majority) for n in ("lora", "adalora") if (r := by.get((n, "none")))
        ]
    out += [_memory_goal(r, ref) for r in rows if r.quant == "8bit" and (ref := by.get((r.method, "none")))]
    return out


def _speed_goal(lora: Row, b: Row, metric: str) -> Goal:
    target = SPEED_TARGETS[b.method]
    ratio = lora.samples_per_second.mean / b.samples_per_second.mean
    diff = lora.metrics[metric].mean - b.metrics[metric].mean
    return Goal(
        f"LoRA training samples/s vs {b.method}",
        f"≥ {target}×",
        f"{ratio:.2f}× ({lora.samples_per_second.mean:.1f} vs {b.samples_per_second.mean:.1f}); "
        f"{metric} {diff:+.3f}",
        ratio >= target,
    )


def _flops_goal(lora: Row) -> Goal:
    share = lora.real_flops_share.mean
    best = (
        f"; {100 * lora.best_flops_share.mean:.0f}% of the {lora.best_dtype} peak" if lora.best_dtype else ""
    )
    return Goal(
        "LoRA FLOP/s on real tokens vs measured matmul peak",
        "≥ 70%",
        f"{100 * share:.0f}% ({100 * lora.computed_flops_share.mean:.0f}% counting padding)" + best,
        share >= 0.70,
    )


def _quality_goal(r: Row, full: Row, task: str, majority: float | None) -> Goal:
    """Within 1 point of full fine-tuning with at most 1% trained.

    Not judged when full fine-tuning itself did not beat the majority class: matching a model that learned nothing
    says nothing about the method.
    """
    metric, higher = PRIMARY[task]
    mine, theirs = r.metrics[metric].mean, full.metrics[metric].mean
    gap = (
        theirs - mine if higher else mine - theirs
    )  # how far behind full; an error metric (MAE): behind is higher
    measured = (
        f"{mine - theirs:+.3f} {metric} ({mine:.3f} vs {theirs:.3f}), {r.trainable_percent:.2f}% trainable"
    )
    judged = learned(full, task, majority)
    if not judged:
        measured += f"; full fine-tuning did not beat the majority class ({majority:.3f})"
    return Goal(
        f"{r.method} vs full fine-tuning",
        "within 1 point, ≤ 1% trainable",
        measured,
        (gap <= 0.01 and r.trainable_percent <= 1.0) if judged else None,
    )


def _memory_goal(r: Row, ref: Row) -> Goal:
    ratio = r.peak_bytes.mean / ref.peak_bytes.mean
    gpu = r.memory_kind == "cuda_max_allocated"
    limit = 0.55 if gpu else 0.5
    return Goal(
        f"{r.method} 8-bit peak memory vs unquantised",
        f"≤ {limit}× ({'GPU bf16' if gpu else 'CPU fp32'})",
        f"{ratio:.2f}× ({mb(r.peak_bytes.mean)} vs {mb(ref.peak_bytes.mean)})",
        ratio <= limit,
    )


def mb(n: float) -> str:
    """Decimal units, as `peftkit doctor` and `du --si` print them."""
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
