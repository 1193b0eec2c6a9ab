"""metrics.json on the terminal: one rich table per question (overall, then a row per segment that answered and per
value of the segment column), the primary metric first and the rows each figure stands on; lift and capture under
it, and what was skipped."""

from __future__ import annotations

from typing import Any

# The columns shown after the primary metric and support, in this order, where the task has them.
SHOWN = ("accuracy", "macro_f1", "auc", "pr_auc", "mae", "rmse", "spearman", "ece", "brier")


def print_report(report: dict[str, Any], console) -> None:
    """Every question's table on a rich `console`."""
    from rich.table import Table

    for name, q in report["questions"].items():
        primary = q["primary"]
        shown = [m for m in SHOWN if m in q["overall"] and m != primary]
        direction = "higher" if q["higher_is_better"] else "lower"
        title = (
            f"{name}: {q['task']}, labels from column {q['label_column']!r}; {primary}: {direction} is better"
        )
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(["rows", primary, "support", *shown]):
            table.add_column(column, justify="left" if i == 0 else "right")
        groups = [("overall", q["overall"])]
        if len(q.get("segments", {})) > 1:  # one adapter answered every row: its row would repeat overall
            groups += [(f"adapter {k}", v) for k, v in q["segments"].items()]
        if "segment_values" in q:
            column = q["segment_values"]["column"]
            groups += [(f"{column}={k}", v) for k, v in q["segment_values"]["values"].items()]
        for label, figures in groups:
            table.add_row(
                label,
                _cell(figures[primary]),
                str(figures["support"]),
                *(_cell(figures.get(m)) for m in shown),
            )
        console.print(table)
        for line in _notes(q):
            console.print(line, highlight=False)


def _notes(q: dict[str, Any]) -> list[str]:
    notes = []
    if "lift" in q:
        lift = q["lift"]
        for key in ("top_10", "top_20"):
            at = lift[key]
            if at["lift"] is not None:
                notes.append(
                    f"  top {at['share']:.0%} by p({q['positive']}): {at['rows']} rows, lift {at['lift']:.2f}, "
                    f"capture {at['capture']:.1%} (of {lift['positives']}; base rate {lift['positive_rate']:.1%})"
                )
    rows = q["rows"]
    if rows["empty_label"] or rows["unanswered"]:
        notes.append(
            f"  skipped: {rows['empty_label']} row(s) with an empty label, {rows['unanswered']} that could not be "
            "answered (their error is in predictions.csv)"
        )
    return notes


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
