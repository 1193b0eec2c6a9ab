"""The ``config`` row, and the run's length as training computes it: the optimizer steps of each run doctor plans."""

from __future__ import annotations

from peftkit.doctor.check import OK, Check, Facts
from peftkit.doctor.data import segment_adapter_rows
from peftkit.runtime import world_size


def check_config(facts: Facts, source: str | None) -> Check:
    """The validated config in one line, with the schedule training would pick (or what the config alone says)."""
    cfg, t = facts.cfg, facts.cfg.train
    where = f"{source}: " if source else ""
    if facts.splits is not None:
        from peftkit.training.plan import make_plan

        schedule = make_plan(len(facts.splits.train_texts), cfg, world_size()).describe()
    else:  # the data check failed: what the config alone says
        length = (
            f"{t.max_steps} steps"
            if t.max_steps > 0
            else f"{t.epochs:g} epoch(s)"
            if t.epochs
            else "auto epochs"
        )
        schedule = f"{length}, lr {t.lr:g}" if t.lr else f"{length}, lr auto"
    return Check(
        "config",
        OK,
        f"{where}{cfg.task}, {cfg.model.name} + {cfg.method.name}, quant {cfg.model.quant}, "
        f"batch {t.batch_size}x{t.grad_accum}, {schedule}",
    )


def total_steps(facts: Facts, rows: int | None = None) -> int | None:
    """Optimizer steps of the run (of `rows` training rows when given), as training computes them; None when the
    row count is unknown because the data check failed."""
    from peftkit.training.plan import make_plan

    if rows is None:
        if facts.cfg.train.max_steps <= 0 and facts.splits is None:
            return None
        rows = len(facts.splits.train_texts) if facts.splits is not None else 0
    return make_plan(rows, facts.cfg, world_size()).steps


def planned_runs(facts: Facts) -> list[tuple[str, int]]:
    """(label, optimizer steps) of each run to check: the run itself, and for a bank also its shortest segment run;
    empty when the run length is unknown."""
    steps = total_steps(facts)
    if steps is None:
        return []
    if facts.cfg.segments is None:
        return [("the run", steps)]
    runs = [("the global adapter", steps)]
    segment_rows = segment_adapter_rows(facts)
    if segment_rows and facts.cfg.train.max_steps <= 0:  # with max_steps every run has the same length
        fewest = min(segment_rows.values())
        runs.append((f"the smallest segment adapter ({fewest} rows)", total_steps(facts, fewest)))
    return runs
