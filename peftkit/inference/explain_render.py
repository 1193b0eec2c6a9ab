"""Showing explanations (`peftkit.inference.explain`): tokens highlighted by the sign and strength of their
attribution, in the terminal (rich) or in a self-contained HTML page.

Green: the token pushed the explained output up (towards the predicted class; for ordinal, towards higher labels;
for regression, a higher score); red: down. The strength is relative to the row's largest |attribution|, so rows
are read one at a time, not compared by colour.

    peftkit predict --adapter runs/x --data rows.csv --output preds.csv --explain --explain-html why.html
"""

from __future__ import annotations

import html
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.artifacts.io import atomic_path

if TYPE_CHECKING:
    from peftkit.inference.explain import ExplainOptions, Explanation
    from peftkit.inference.table import TablePredictions

TERMINAL_ROWS = 10  # rows shown in the terminal; the file and --explain-html have them all


def _segments(e: Explanation) -> list[tuple[str, float | None]]:
    """The text cut into (piece, attribution of its token, or None for characters no token covers)."""
    out, at = [], 0
    for t in e.tokens:
        if t.start < at or t.end <= t.start:
            continue
        if t.start > at:
            out.append((e.text[at : t.start], None))
        out.append((t.text, t.attribution))
        at = t.end
    if at < len(e.text):
        out.append((e.text[at:], None))
    return out


def _scale(e: Explanation) -> float:
    return max((abs(t.attribution) for t in e.tokens), default=0.0) or 1.0


def terminal_text(title: str, e: Explanation):
    """One row as a rich `Text`: a title line, the highlighted text, the field sums."""
    from rich.text import Text

    out = Text(f"{title}  ", style="bold")
    out.append(
        f"{e.target} = {e.output:+.3f} (baseline {e.baseline_output:+.3f}, delta {e.delta:+.1e})\n", "dim"
    )
    scale = _scale(e)
    for piece, attribution in _segments(e):
        if attribution is None:
            out.append(piece)
            continue
        strength = min(1.0, abs(attribution) / scale)
        fade = int(255 - 175 * strength)
        colour = f"rgb({fade},255,{fade})" if attribution >= 0 else f"rgb(255,{fade},{fade})"
        out.append(piece, style=f"black on {colour}")
    if e.fields:
        out.append("\n  fields: " + ", ".join(f"{k} {v:+.3f}" for k, v in e.fields.items()), "dim")
    if e.truncated:
        out.append("\n  (truncated at the adapter's max_length: the rest was not read)", "dim")
    return out


def show_terminal(items: list[tuple[str, Explanation]], console=None, limit: int = TERMINAL_ROWS) -> None:
    """Print the first `limit` explanations, highlighted (to stderr by default: stdout carries the data)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    for title, e in items[:limit]:
        console.print(terminal_text(title, e))
    if len(items) > limit:
        console.print(f"... {len(items) - limit} more rows: see the explanation columns or --explain-html")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; }}
.row {{ border-bottom: 1px solid #ddd; padding: 0.8rem 0; }}
.head {{ color: #555; font-size: 0.85rem; }}
.text {{ font-size: 1.1rem; line-height: 1.9; white-space: pre-wrap; }}
.text span {{ border-radius: 3px; padding: 0 1px; }}
table {{ font-size: 0.85rem; border-collapse: collapse; }} td {{ padding: 0 0.6rem; }}
</style></head><body>
<h1>{title}</h1>
<p>Green: the token pushed the explained output up; red: down; the stronger the colour, the larger its share of the
row's largest attribution. Hover a token for its value.</p>
{rows}
</body></html>
"""


def html_row(title: str, e: Explanation) -> str:
    """One row as an HTML fragment; every piece of text escaped."""
    scale = _scale(e)
    parts = []
    for piece, attribution in _segments(e):
        if attribution is None:
            parts.append(html.escape(piece))
            continue
        alpha = min(1.0, abs(attribution) / scale) * 0.8
        rgb = "0,160,60" if attribution >= 0 else "220,30,30"
        parts.append(
            f'<span style="background: rgba({rgb},{alpha:.2f})" title="{attribution:+.4f}">{html.escape(piece)}</span>'
        )
    head = (
        f"{html.escape(title)} &middot; {html.escape(e.target)} = {e.output:+.3f} "
        f"(baseline {e.baseline_output:+.3f}, delta {e.delta:+.1e})"
        + (" &middot; truncated" if e.truncated else "")
    )
    fields = ""
    if e.fields:
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:+.4f}</td></tr>" for k, v in e.fields.items())
        fields = f"<table><tr><th>field</th><th>attribution</th></tr>{cells}</table>"
    return f'<div class="row"><div class="head">{head}</div><div class="text">{"".join(parts)}</div>{fields}</div>'


def write_html(items: list[tuple[str, Explanation]], path: Path, title: str = "peftkit explanations") -> None:
    """A self-contained page (no scripts, no outside files) with every explanation; written atomically."""
    page = _PAGE.format(title=html.escape(title), rows="\n".join(html_row(t, e) for t, e in items))
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")


def report(result: TablePredictions, options: ExplainOptions, html_path: Path | None = None) -> str:
    """After ``peftkit predict --explain``: the HTML page when asked, the highlighted rows when stderr is a
    terminal, and the cost line (returned, for stderr)."""
    items = [
        (f"row {row + 1}" + (f" · {question}" if question else "") + (f" · {e.label}" if e.label else ""), e)
        for row, question, e in result.explanations or []
    ]
    if html_path is not None:
        write_html(items, html_path)
    if items and sys.stderr.isatty():
        show_terminal(items)
    seconds = sum(e.seconds for _, e in items)
    per_row = 1000 * seconds / len(items) if items else 0.0
    return f"explained {len(items)} answers in {seconds:.1f} s: {per_row:.0f} ms per answer (n_steps {options.n_steps})"
