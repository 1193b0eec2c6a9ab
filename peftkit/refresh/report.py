"""A refresh's report as a person reads it: a terminal table, Markdown, and the JSON beside them."""

from __future__ import annotations

from pathlib import Path

from peftkit.artifacts.io import atomic_folder, write_json
from peftkit.refresh.run import RefreshReport

COLUMNS = ("question", "adapter", "rows", "current", "candidate", "gain", "95% interval", "decision")


def rows(report: RefreshReport) -> list[tuple[str, ...]]:
    """One row per adapter: its scores on the held-out rows, the gain's interval and the decision."""
    out = []
    for r in report.results:
        gate = r.get("gate")
        version = f" v{r['current_version']}" if r.get("current_version") else ""
        decision = r["decision"] + (f" -> v{r['new_version']}" if "new_version" in r else "")
        if gate is None or gate["current"] is None:
            scores = ("-", "-", "-", "-")
        else:
            scores = (
                f"{gate['current']:.3f}",
                f"{gate['candidate']:.3f}",
                f"{gate['difference']:+.3f}",
                f"{gate['low']:+.3f}..{gate['high']:+.3f}",
            )
        out.append(
            (
                r["question"],
                r["adapter"] + version,
                f"{r['train_rows']} / {r['held_out_rows']}",
                *scores,
                decision,
            )
        )
    return out


def markdown(report: RefreshReport) -> str:
    data = report.to_json()
    lines = [
        f"# peftkit refresh: `{data['target']}` on `{data['data']}`",
        "",
        f"Metric: {', '.join(sorted({r['gate']['metric'] for r in report.results if r.get('gate')})) or '-'}. "
        f"Held out for the gate: {data['held_out']}. A candidate is promoted when the 95% paired bootstrap interval of "
        f"its gain over the adapter in production stays above -{data['margin']:g}"
        + (" (dry run: nothing was promoted)." if data["dry_run"] else "."),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in rows(report)),
        "",
        "Why, per adapter:",
        "",
        *(f"- {r['question']}/{r['adapter']}: {r['why']}" for r in report.results),
    ]
    drift = data.get("drift")
    if drift and "table" in drift:
        lines += ["", f"Drift of the new rows against training (PSI; worst: {drift['worst'] or 'none'}):", ""]
        lines += ["| question | segment | what | PSI | flag |", "|---|---|---|---|---|"]
        lines += [
            f"| {t['question']} | {t['segment']} | {t['what']} | {t['psi']:.3f} | {t['flag'] or ''} |"
            for t in drift["table"]
        ]
    elif drift:
        lines += ["", f"Drift: not measured ({drift['error']})."]
    return "\n".join(lines) + "\n"


def print_report(report: RefreshReport) -> None:
    from rich.console import Console
    from rich.table import Table

    metrics = sorted({r["gate"]["metric"] for r in report.results if r.get("gate")})
    table = Table(
        title=f"refresh {report.target}: {', '.join(metrics) or 'no candidate'} on the held-out rows",
        title_justify="left",
    )
    for column in COLUMNS:
        table.add_column(column)
    for row in rows(report):
        table.add_row(*row)
    console = Console(width=max(Console().width, 110))  # eight columns: wider than 80 rather than wrapped
    console.print(table)
    console.print(
        f"held out for the gate: {report.cut}; promoted when the interval's low end > -{report.margin:g}"
    )
    for r in report.results:
        console.print(f"  {r['question']}/{r['adapter']}: {r['why']}")
    if report.drift and "worst" in report.drift:
        flags = report.drift["flags"]
        console.print(
            f"drift of the new rows (inputs vs training profiles): {flags['major']} major, {flags['moderate']} "
            f"moderate; see peftkit drift for the fields"
        )


def write_report(report: RefreshReport, folder: Path) -> None:
    """``report.json`` and ``report.md`` into `folder`, written whole."""
    with atomic_folder(Path(folder)) as tmp:
        write_json(tmp / "report.json", report.to_json())
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
