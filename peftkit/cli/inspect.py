"""``peftkit inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peftkit.cli.common import JsonFlag, command, emit


@command
def inspect(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder written by `peftkit train`.")],
    json_: JsonFlag = False,
) -> None:
    """Show what an adapter is: method, base (and its weights hash), task and labels, held-out metrics, size,
    trainable parameters, and method facts such as AdaLoRA's final rank per layer. Loads no model.

    Example:

    ```
    peftkit inspect runs/intent-adalora --json
    ```
    """
    from peftkit.adapter import read_manifest
    from peftkit.methods import METHODS

    m = read_manifest(adapter)
    info = {
        "adapter": str(adapter),
        "method": m["method"],
        "task": m["task"],
        "labels": m.get("labels"),
        "base": m["base"],
        "quant": m["quant"],
        "trainable_params": m["trainable_params"],
        "trainable_percent": m["trainable_percent"],
        "adapter_bytes": m["adapter_bytes"],
        "metrics": m["metrics"],
        "data": m["data"],
        "train": m["train"],
        "method_details": METHODS[m["method"]].describe(Path(adapter)) if m["method"] in METHODS else {},
        "files": {p.name: p.stat().st_size for p in sorted(Path(adapter).iterdir()) if p.is_file()},
        "versions": m.get("versions", {}),
    }
    emit(info, json_, lambda: _print(info))


def _print(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"adapter {info['adapter']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    base = info["base"]
    rows = [
        ("method", info["method"]),
        ("task", info["task"] + (f" ({' < '.join(info['labels'])})" if info["task"] == "ordinal" else "")),
        ("labels", ", ".join(info["labels"] or []) or "-"),
        (
            "base",
            f"{base['name']} ({base['architecture']}, sha256 {base['sha256'][:16]}…), quant {info['quant']}",
        ),
        ("trainable", f"{info['trainable_params']:,} params ({info['trainable_percent']:.3f}%)"),
        ("adapter size", f"{info['adapter_bytes'] / 1e6:.2f} MB"),
        (
            "data",
            f"{info['data']['train_rows']:,} train / {info['data']['eval_rows']:,} eval rows from {info['data']['train_source']}",
        ),
        (
            "training",
            f"{info['train']['steps']} steps, {info['train']['seconds']:.0f} s, "
            f"{info['train']['samples_per_second']:.1f} samples/s on {info['train']['device']}",
        ),
    ]
    rows += [(f"eval {k}", f"{v:.4f}") for k, v in info["metrics"].items()]
    for key, value in info["method_details"].items():
        if key == "rank_pattern" and isinstance(value, dict):
            ranks = sorted(value.items())
            value = (
                ", ".join(f"{name.split('.', 1)[-1]}={r}" for name, r in ranks)
                if ranks
                else "(none recorded)"
            )
        rows.append((key.replace("_", " "), str(value)))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
