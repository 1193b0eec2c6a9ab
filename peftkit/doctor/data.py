"""The ``data`` and ``segments`` rows: the rows read, validated and split exactly as training does, and which
segment values of a bank get an adapter of their own."""

from __future__ import annotations

from collections import Counter

from peftkit.doctor.check import OK, WARN, Check, Facts


def check_data(facts: Facts) -> Check:
    """Read, validate and split the rows exactly as training does (`load_splits`), and report what came out."""
    from peftkit.data import load_splits
    from peftkit.data.splits import check_every_class_trains

    cfg = facts.cfg
    splits = facts.splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
    check_every_class_trains(splits)  # training refuses such a split: so does its check
    stats = splits.stats
    detail = f"{stats['train_rows']} train / {stats['eval_rows']} eval rows from {cfg.data.train} (split: {stats['split']})"
    if splits.labels is not None:
        counts = stats["label_counts"]["train"]
        detail += "; labels " + ", ".join(f"{k} {v}" for k, v in counts.items())
    else:
        s = stats["label_summary"]["train"]
        detail += f"; scores {s['min']:g}..{s['max']:g} (mean {s['mean']:.3g})"
    leaked = stats.get("eval_rows_leaked", 0)
    if leaked:
        return Check(
            "data",
            WARN,
            f"{detail}; {leaked} eval row(s) repeat a training text and are left out of evaluation",
            "remove the training texts from the eval file so the held-out score counts every eval row",
        )
    return Check("data", OK, detail)


def check_segments(facts: Facts) -> Check | None:
    """An adapter bank: the segment column exists in the kept rows, and which values have enough rows for an adapter."""
    seg = facts.cfg.segments
    if seg is None:
        return None
    if facts.splits is None:
        return Check(
            "segments",
            WARN,
            f"column {seg.column!r} not checked: the data check failed",
            "fix the data row first",
        )
    from peftkit.training.segments import chosen_values, segment_values

    # The functions bank training calls: the same missing-column and empty-cell errors, the same value choice.
    train_seg, _ = segment_values(facts.splits, seg.column, facts.cfg.data.train)
    chosen_values(train_seg, seg.values, seg.column)  # refuses segments.values that never occur
    counts = Counter(train_seg.tolist())
    trained = segment_adapter_rows(facts)
    rest = {v: n for v, n in counts.most_common() if v not in trained}
    listing = ", ".join(f"{v} {n}" for v, n in trained.items())
    fallback = (
        f"; answered by the {seg.fallback} fallback: " + ", ".join(f"{v} {n}" for v, n in rest.items())
        if rest
        else ""
    )
    if not trained:
        return Check(
            "segments",
            WARN,
            f"no value of {seg.column!r} has {seg.min_rows}+ training rows, so the bank holds only the global adapter{fallback}",
            "lower --min-segment-rows, or add training rows for the segments you need",
        )
    return Check(
        "segments",
        OK,
        f"{len(trained)} of {len(counts)} values of {seg.column!r} get an adapter ({seg.min_rows}+ training rows): {listing}{fallback}",
    )


def segment_adapter_rows(facts: Facts) -> dict[str, int]:
    """Training rows of each segment value that gets its own adapter (as `segments.train_bank` decides); empty
    when the rows or the column are missing (the data and segments rows report that)."""
    seg = facts.cfg.segments
    if seg is None or facts.splits is None or seg.column not in facts.splits.train_frame.columns:
        return {}
    counts = Counter(facts.splits.train_frame[seg.column].astype(str))
    return {
        v: n for v, n in counts.most_common() if n >= seg.min_rows and (seg.values is None or v in seg.values)
    }
