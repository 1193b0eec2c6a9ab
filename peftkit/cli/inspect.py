"""``peftkit inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peftkit.cli.common import JsonFlag, command, emit


@command
def inspect(
    adapter: Annotated[
        Path, typer.Argument(help="Adapter folder written by `peftkit train`, or an adapter bank folder.")
    ],
    json_: JsonFlag = False,
) -> None:
    """Show what an adapter is: method, base (and its weights hash), task and labels, held-out metrics, size,
    trainable parameters, and method facts such as AdaLoRA's final rank per layer. For a bank: its segments,
    fallback, and each segment adapter's held-out score next to the global adapter's on the same rows; for a bank of
    questions (`peftkit bank build`), each question's task, method, labels, segments and held-out score. For an export
    (`peftkit export`): its source adapter and base, target, ranks and files. Loads no model.

    Examples:

    ```
    peftkit inspect runs/intent-adalora --json
    peftkit inspect banks/reviews
    ```
    """
    from peftkit.artifacts.bank_file import is_bank
    from peftkit.artifacts.names import EXPORT_MANIFEST

    if is_bank(adapter):
        _inspect_bank(adapter, json_)
    elif (adapter / EXPORT_MANIFEST).is_file():
        _inspect_export(adapter, json_)
    else:
        info = _adapter_info(adapter)
        emit(info, json_, lambda: _print(info))


def _adapter_info(adapter: Path) -> dict:
    """What `peftkit inspect --json` shows for an adapter folder, from its manifest and files."""
    from peftkit.artifacts.manifest import read_manifest
    from peftkit.methods import METHODS

    m = read_manifest(adapter)
    return {
        "adapter": str(adapter),
        "method": m.method,
        "task": m.task,
        "labels": m.labels,
        "base": m.base.to_json(),
        "quant": m.quant,
        "trainable_params": m.trainable_params,
        "trainable_percent": m.trainable_percent,
        "adapter_bytes": m.adapter_bytes,
        "primary_metric": _score_key(m.task) if m.task in _known_tasks() else None,
        "metrics": m.metrics,
        "calibration": m.calibration,
        "threshold": m.threshold,
        "data": m.data.to_json(),
        "train": m.train.to_json(),
        "method_details": METHODS[m.method].describe(Path(adapter)) if m.method in METHODS else {},
        "files": {p.name: p.stat().st_size for p in sorted(Path(adapter).iterdir()) if p.is_file()},
        "versions": m.versions,
    }


def _print(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"adapter {info['adapter']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in _rows(info):
        table.add_row(key, value)
    Console().print(table)


def _rows(info: dict) -> list[tuple[str, str]]:
    """The (name, value) rows of the adapter table."""
    base, data, train = info["base"], info["data"], info["train"]
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
            f"{data['train_rows']:,} train / {data['eval_rows']:,} eval rows from {data['train_source']}",
        ),
        (
            "training",
            f"{train['steps']} steps, {train['seconds']:.0f} s, "
            f"{train['samples_per_second']:.1f} samples/s on {train['device']}",
        ),
    ]
    rows += [(f"eval {k}", f"{v:.4f}") for k, v in info["metrics"].items() if isinstance(v, int | float)]
    rows += _decision_rows(info.get("calibration"), info.get("threshold"))
    for key, value in info["method_details"].items():
        if key == "rank_pattern" and isinstance(value, dict):
            ranks = sorted(value.items())
            value = (
                ", ".join(f"{name.split('.', 1)[-1]}={r}" for name, r in ranks)
                if ranks
                else "(none recorded)"
            )
        rows.append((key.replace("_", " "), str(value)))
    return rows


def _inspect_bank(folder: Path, json_: bool) -> None:
    from peftkit.artifacts.bank_file import read_bank_file, read_bank_index

    index, single = read_bank_index(folder)
    if single:
        info = {"bank": str(folder), **_question_info(read_bank_file(folder))}
        emit(info, json_, lambda: _print_bank(info))
        return
    info = {
        "bank": str(folder),
        "base": index.base.to_json(),
        "quant": index.quant,
        "dtype": index.dtype,
        "questions": {
            name: {"path": q.path, **_question_info(read_bank_file(folder / q.path))}
            for name, q in index.questions.items()
        },
    }
    emit(info, json_, lambda: _print_questions(info))


def _question_info(bank) -> dict:
    return {
        "method": bank.method,
        "task": bank.task,
        "labels": bank.labels,
        "base": bank.base.to_json(),
        "quant": bank.quant,
        "segment_column": bank.segment_column,
        "fallback": bank.fallback,
        "segments": bank.segments,
        "adapters": {name: entry.to_json() for name, entry in bank.adapters.items()},
        "segment_evaluation": bank.segment_evaluation or {},
    }


def _print_questions(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    base = info["base"]
    console.print(
        f"[bold]bank[/bold] {info['bank']}: {len(info['questions'])} questions over {base['name']} "
        f"(sha256 {base['sha256'][:16]}…), quant {info['quant']}, dtype {info['dtype']}"
    )
    table = Table("question", "task", "method", "labels", "segments", "adapters", "held-out (global)")
    for name, q in info["questions"].items():
        key = _score_key(q["task"])
        held_out = q["adapters"].get("global", {}).get("metrics", {}).get(key)
        table.add_row(
            name,
            q["task"],
            q["method"],
            ", ".join(q["labels"] or []) or "(score)",
            f"{', '.join(q['segments']) or '(none)'} by {q['segment_column']!r}"
            if q["segments"]
            else "(none)",
            str(len(q["adapters"])),
            "" if held_out is None else f"{key} {held_out:.3f}",
        )
    console.print(table)
    for name, q in info["questions"].items():
        if q["segments"]:
            console.print(f"[bold]{name}[/bold]")
            _print_bank({"bank": f"{info['bank']}/{q['path']}", **q}, header=False)


def _known_tasks():
    from peftkit.tasks import TASKS

    return TASKS


def _decision_rows(calibration: dict | None, threshold: dict | None) -> list[tuple[str, str]]:
    """The fitted decision: temperature with held-out ECE/Brier before -> after, and the threshold with its rates."""
    rows = []
    if calibration:
        fitted = f"temperature {calibration['temperature']:.3f}" + (
            f" (not fitted: {calibration['skipped']})" if "skipped" in calibration else ""
        )
        rows.append(
            (
                "calibration",
                f"{fitted}; held-out ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}, "
                f"Brier {calibration['brier_before']:.3f} -> {calibration['brier_after']:.3f}",
            )
        )
    if threshold and "value" in threshold:
        r = threshold["held_out"]
        rows.append(
            (
                "threshold",
                f"{threshold['positive']} when P >= {threshold['value']:.3f} ({threshold['objective']}); held-out "
                f"precision {r['precision']:.3f}, recall {r['recall']:.3f}, {100 * r['positive_share']:.1f}% positive",
            )
        )
    elif threshold:
        rows.append(("threshold", f"none ({threshold['skipped']}): argmax"))
    return rows


def _score_key(task: str) -> str:
    from peftkit.tasks import TASKS

    return TASKS[task].primary.name


def _print_bank(info: dict, header: bool = True) -> None:
    from rich.console import Console
    from rich.table import Table

    key = _score_key(info["task"])
    console = Console()
    if header:
        console.print(
            f"[bold]bank[/bold] {info['bank']}: {info['method']} adapters on {info['base']['name']} "
            f"(sha256 {info['base']['sha256'][:16]}…), {info['task']}, segments from column "
            f"{info['segment_column']!r}, fallback {info['fallback']}"
        )
    table = Table("segment", "adapter", "train rows", "eval rows", f"global {key}", f"own {key}", "gain")
    for value, r in info["segment_evaluation"].items():
        own, glob = r.get("own", {}).get(key), r.get("global", {}).get(key)
        table.add_row(
            value,
            r.get("adapter") or f"({info['fallback']})",
            str(r["train_rows"]),
            str(r["eval_rows"]),
            "" if glob is None else f"{glob:.3f}",
            "" if own is None else f"{own:.3f}",
            "" if own is None or glob is None else f"{own - glob:+.3f}",
        )
    for value, name in info["segments"].items():  # routed by hand (bank.add), not from training
        if value not in info["segment_evaluation"]:
            table.add_row(value, name, "", "", "", "", "")
    console.print(table)


def _inspect_export(folder: Path, json_: bool) -> None:
    from peftkit.export.record import read_export_record

    record = read_export_record(folder)
    info = {**record.to_json(), "export": str(folder)}
    info.setdefault("files", sorted(p.name for p in folder.iterdir() if p.is_file()))

    def human() -> None:
        src = record.source
        typer.echo(f"export   {folder}  (target {record.target}{', merged' if record.merged else ''})")
        typer.echo(f"source   {src.adapter}  ({src.method}, {src.task})")
        typer.echo(f"base     {src.base.name}  (sha256 {src.base.sha256[:16]}…)")
        ranks = record.lora.ranks if record.lora is not None else {}
        if ranks:
            shown = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in sorted(ranks.items())[:8])
            typer.echo(f"ranks    {shown}{' …' if len(ranks) > 8 else ''}")
        for note in record.notes:
            typer.echo(f"note     {note}")
        typer.echo(f"files    {', '.join(info['files'])}")

    emit(info, json_, human)
