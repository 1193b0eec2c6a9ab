"""The no-regression gate: a candidate replaces the adapter in production only where it is not worse, on the same
fresh rows, by more than a stated margin.

Both adapters answer the same held-out rows (each with its own fitted decision: temperature and threshold), so their
scores are paired: a row that is hard is hard for both. The difference of the metric (candidate minus current,
turned so that positive is better) gets a 95% paired bootstrap interval (scipy.stats.bootstrap, percentile method,
rows resampled together). The candidate is **promoted** when the interval's lower end is above ``-margin``: with 95%
confidence it loses at most ``margin`` (a non-inferiority test); otherwise the current adapter stays. Few held-out
rows give wide intervals, so a candidate that is only as good as the current one is kept out until the rows show it:
the gate errs towards what is already serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from peftkit.tasks import TASKS, Decision, metric

DEFAULT_MARGIN = 0.01  # in the metric's own units: one point of macro-F1, 0.01 ranks of MAE
RESAMPLES = 1000
MIN_ROWS = 30  # fewer held-out rows than this: no verdict, the current adapter stays


@dataclass
class Verdict:
    """The gate's answer for one adapter: both scores, the interval of their difference, and the decision."""

    metric: str
    higher_is_better: bool
    rows: int
    current: float | None
    candidate: float | None
    difference: float | None  # candidate - current, positive = better
    low: float | None  # 95% paired bootstrap interval of the difference
    high: float | None
    margin: float
    promote: bool
    why: str

    def to_json(self) -> dict:
        return asdict(self)


def judge(
    task_name: str,
    y: np.ndarray,
    current: np.ndarray,
    candidate: np.ndarray,
    *,
    current_decision: Decision,
    candidate_decision: Decision,
    metric_name: str | None = None,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
) -> Verdict:
    """Gate one candidate: `current` and `candidate` are both adapters' logits on the same held-out rows `y`."""
    task = TASKS[task_name]
    chosen = metric(metric_name) if metric_name else task.primary
    if len(y) < MIN_ROWS:
        return Verdict(
            chosen.name,
            chosen.higher_is_better,
            len(y),
            None,
            None,
            None,
            None,
            None,
            margin,
            False,
            f"{len(y)} held-out rows (at least {MIN_ROWS} needed for a verdict): the current adapter stays",
        )

    # Decoding is row by row, so each adapter's rows are decoded once and resampled after.
    cur_out, cand_out = task.decode(current, current_decision), task.decode(candidate, candidate_decision)

    def value(out, rows: np.ndarray) -> float:
        return chosen.better(_metric(task, chosen.name, y[rows], _rows(out, rows)))

    everything = np.arange(len(y))
    cur, cand = value(cur_out, everything), value(cand_out, everything)
    low, high = _interval(lambda rows: value(cand_out, rows) - value(cur_out, rows), len(y), seed)
    sign = 1 if chosen.higher_is_better else -1
    promote = low > -margin
    if promote:
        why = f"the candidate loses at most {margin:g} {chosen.name} (95% interval of the gain {low:+.3f} .. {high:+.3f})"
    else:
        why = f"the candidate may lose more than {margin:g} {chosen.name} (95% interval of the gain {low:+.3f} .. {high:+.3f})"
    return Verdict(
        chosen.name,
        chosen.higher_is_better,
        len(y),
        sign * cur,
        sign * cand,
        cand - cur,
        low,
        high,
        margin,
        promote,
        why,
    )


def _rows(out, rows: np.ndarray):
    from dataclasses import replace

    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return replace(out, index=pick(out.index), score=pick(out.score), probs=pick(out.probs))


def _metric(task, name: str, y: np.ndarray, out) -> float:
    """One metric of decoded rows; the usual ones in a few numpy lines, because the bootstrap computes it 2,000
    times per adapter and the task's full `metrics` (every figure, through scikit-learn) is ~100x slower. Equal to
    `task.metrics(...)[name]` (tests/test_refresh.py checks it)."""
    if name == "accuracy":
        return float((out.index == y).mean())
    if name == "macro_f1":
        k = out.probs.shape[1]
        hit = out.index == y
        tp = np.bincount(y[hit], minlength=k)
        denominator = np.bincount(out.index, minlength=k) + np.bincount(y, minlength=k)
        return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))
    if name == "mae":
        predicted = out.score if out.score is not None else out.index
        return float(np.abs(predicted - y).mean())
    return task.metrics(y, out)[name]


def _interval(difference, n: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of `difference(rows)` over paired resamples of the row indices."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.arange(n),),
        lambda rows: difference(rows.astype(int)),
        vectorized=False,
        n_resamples=RESAMPLES,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
