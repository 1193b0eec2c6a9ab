"""The drift report for people: a rich table on the terminal, or Markdown for a file (`peftkit.evaluation.drift`)."""

from __future__ import annotations

from typing import Any

FLAG_STYLE = {"major": "bold red", "moderate": "yellow", None: "green"}


def _notes(report: dict[str, Any]) -> list[str]:
    out = []
    for question, segments in report["questions"].items():
        for segment, entry in segments.items():
            for key in ("error", "note"):
                if entry.get(key):
                    out.append(f"{question}/{segment}: {entry[key]}")
    return out


def _summary(report: dict[str, Any]) -> str:
    flags = report["flags"]
    what = "adapter " + report["adapter"] if "adapter" in report else "bank " + report["bank"]
    scored = "" if report["scored"] else " (fields only: --no-scores)"
    return (
        f"{report['rows']} rows of {report['data']} against {what}{scored}: {flags['major']} major, "
        f"{flags['moderate']} moderate (PSI >= {report['thresholds']['major']} / >= "
        f"{report['thresholds']['moderate']})"
    )


def print_drift(report: dict[str, Any], console) -> None:
    """The comparisons as one table, largest PSI first, then the summary and any notes."""
    from rich.table import Table

    banked = "bank" in report
    table = Table(title="drift (PSI: training / held-out vs recent rows)")
    for name in (["question", "segment"] if banked else []) + [
        "what",
        "kind",
        "rows",
        "PSI",
        "flag",
        "moved most",
    ]:
        table.add_column(name, justify="right" if name in ("rows", "PSI") else "left")
    for row in report["table"]:
        style = FLAG_STYLE[row["flag"]]
        cells = [row["question"], row["segment"]] if banked else []
        cells += [row["what"], row["kind"], str(row["rows"]), f"{row['psi']:.3f}",
                  f"[{style}]{row['flag'] or 'stable'}[/]", row["change"]]  # fmt: skip
        table.add_row(*cells)
    console.print(table)
    console.print(_summary(report))
    for note in _notes(report):
        console.print(f"note: {note}")


def drift_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: the summary, the table, the notes."""
    lines = [
        "# Drift",
        "",
        _summary(report),
        "",
        "| question | segment | what | kind | rows | PSI | flag | moved most |",
    ]
    lines.append("|---|---|---|---|--:|--:|---|---|")
    for r in report["table"]:
        lines.append(
            f"| {r['question']} | {r['segment']} | {r['what']} | {r['kind']} | {r['rows']} | {r['psi']:.3f} | "
            f"{r['flag'] or 'stable'} | {r['change']} |"
        )
    notes = _notes(report)
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def write_drift(report: dict[str, Any] | None, path) -> None:
    """Write the report to `path`: ``.md`` as Markdown, ``.json`` as JSON, atomically; `report` None: only check
    that `path` can be written (before any work)."""
    from pathlib import Path

    from peftkit.artifacts.io import check_writable_path, write_json, write_text_atomic
    from peftkit.errors import PeftkitError

    path = Path(path)
    if path.suffix.lower() not in (".md", ".json"):
        raise PeftkitError(f"--output {path}: write the report as .md (Markdown) or .json")
    if report is None:
        check_writable_path(path, folder=False)
    elif path.suffix.lower() == ".json":
        write_json(path, report)
    else:
        write_text_atomic(path, drift_markdown(report))
