"""The ranked table of a compare, one line per (method, quantisation): its cells for the terminal and report.md."""

from __future__ import annotations

from typing import Any

from peftkit.compare.report import PRIMARY, Row, mb, rank

MET = {True: "[green]met[/]", False: "[red]short[/]", None: "[yellow]not judged[/]"}  # rich markup


def columns(task: str) -> list[str]:
    """The table's column titles."""
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
    """The table's cells, best row first."""
    metric, _ = PRIMARY[task]
    return [
        [
            r.name + (" [baseline]" if r.baseline else ""),
            r.metrics[metric].text(),
            f"{r.trainable_percent:.2f}%",
            mb(r.adapter_bytes),
            mb(r.peak_bytes.mean),
            f"{r.samples_per_second.mean:.1f}",
            f"{r.real_tokens_per_second.mean:.0f}",
            f"{100 * r.real_flops_share.mean:.0f}% ({100 * r.computed_flops_share.mean:.0f}%)"
            + (f"; {100 * r.best_flops_share.mean:.0f}% of {r.best_dtype}" if r.best_dtype else ""),
            f"{r.latency_ms_p50.mean:.1f}",
            f"{r.throughput_rows_per_second.mean:.0f}",
        ]
        for r in rank(rows, task)
    ]


def print_table(data: dict[str, Any], rows: list[Row], console) -> None:
    """The table, the recommendation and the goals on a rich console."""
    from rich.table import Table

    table = Table(title=f"peftkit compare: {data['recipe']} on {data['model']} ({data['runs']} runs)")
    for i, c in enumerate(columns(data["task"])):
        table.add_column(c, justify="left" if i < 2 else "right")
    for cells in table_rows(rows, data["task"]):
        table.add_row(*cells)
    console.print(table)
    console.print(data["recommendation"].replace("**", ""), highlight=False)
    for g in data["goals"]:
        console.print(f"  goal {g['goal']} ({g['target']}): {g['measured']} {MET[g['met']]}", highlight=False)
