"""``peftkit train``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.methods import METHODS

Method = Enum("Method", {name: name for name in METHODS}, type=str)
Task = Enum("Task", {t: t for t in ("classification", "ordinal", "regression")}, type=str)
Quant = Enum("Quant", {"none": "none", "8bit": "8bit"}, type=str)
ReportTo = Enum("ReportTo", {r: r for r in ("tensorboard", "wandb", "mlflow")}, type=str)

DEFAULT_RECIPE = "reviews/minilm-l6_lora.yaml"
_methods_help = "; ".join(
    f"**{s.name}**: {s.summary} (default lr {s.default_lr:g})" for s in METHODS.values()
)


@command
def train(
    recipe: Annotated[
        Optional[Path],
        typer.Option(
            help="Recipe YAML; flags below override it. Without --recipe and --data: the built-in default recipe."
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(help="Base model: smollm2-135m, minilm-l6, a local HF folder or a .gguf file."),
    ] = None,
    method: Annotated[Optional[Method], typer.Option(help=f"PEFT method. {_methods_help}.")] = None,
    data: Annotated[
        Optional[str], typer.Option(help="Training rows: CSV, JSONL or Parquet file, or builtin:reviews.")
    ] = None,
    eval_data: Annotated[
        Optional[str],
        typer.Option(help="Held-out rows; default: a seeded split of --data (duplicates removed first)."),
    ] = None,
    text_column: Annotated[Optional[str], typer.Option(help="Column holding the text.")] = None,
    template: Annotated[
        Optional[str],
        typer.Option(
            help="Build the text from columns instead: 'orders in 90 days: {orders_90d}; last search: {last_query}'."
        ),
    ] = None,
    label_column: Annotated[
        Optional[str], typer.Option(help="Column holding the label (or the score, for regression).")
    ] = None,
    task: Annotated[
        Optional[Task],
        typer.Option(
            help="classification (unordered labels), ordinal (ordered: give --labels), regression (a number)."
        ),
    ] = None,
    labels: Annotated[
        Optional[str],
        typer.Option(
            help="Label order, comma-separated: weak,medium,strong. Required for ordinal text labels."
        ),
    ] = None,
    quant: Annotated[
        Optional[Quant],
        typer.Option(
            help="8bit: load the base with bitsandbytes LLM.int8 (CUDA or CPU); adapter and head stay fp32."
        ),
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="Adapter folder to write; default runs/<data>-<model>-<method>.")
    ] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the training rows.")] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(help="Stop after this many optimizer steps (overrides --epochs).")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per batch per device.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate; default: the method's own.")] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Seed for the split, the head's init and the data order.")
    ] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Tokens kept per row.")] = None,
    report_to: Annotated[
        Optional[list[ReportTo]], typer.Option(help="Also log to tensorboard, wandb or mlflow (repeatable).")
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Override any recipe key: --set method.r=16 --set train.warmup_ratio=0.1 (repeatable).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing, different adapter in --output.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Train one adapter and write its folder (weights, manifest, model card, loss curve).

    Examples:

        peftkit train                                   # default recipe: minilm-l6 + LoRA on the packaged reviews

        peftkit train --model smollm2-135m --method adalora --data reviews.csv --text-column text \\
            --label-column label --task classification --quant 8bit --output runs/intent-adalora

        peftkit train --recipe recipes/reviews/minilm-l6_lora.yaml --set method.r=16 --epochs 2
    """
    from peftkit.config import load_config, parse_set
    from peftkit.train import train as run_training

    flags = {
        "model.name": model,
        "method.name": method.value if method else None,
        "data.train": data,
        "data.eval": eval_data,
        "data.text_column": text_column,
        "data.template": template,
        "data.label_column": label_column,
        "task": task.value if task else None,
        "data.labels": [s.strip() for s in labels.split(",")] if labels else None,
        "model.quant": quant.value if quant else None,
        "output": str(output) if output else None,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
        "data.max_length": max_length,
        "train.report_to": [r.value for r in report_to] if report_to else None,
    }
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_set(set_ or [])
    if recipe is None and data is None:
        recipe = _builtin_recipe(DEFAULT_RECIPE)
    cfg = load_config(recipe, overrides)
    with stdout_to_stderr():
        result = run_training(cfg, overwrite=overwrite, resume=resume)
    m = result.manifest
    summary = {
        "output": str(result.output),
        "method": m["method"],
        "base": m["base"]["name"],
        "task": m["task"],
        "metrics": m["metrics"],
        "trainable_params": m["trainable_params"],
        "adapter_bytes": m["adapter_bytes"],
        "train_samples_per_second": m["train"]["samples_per_second"],
        "seconds": m["train"]["seconds"],
    }
    emit(summary, json_, lambda: _print_summary(summary))


def _print_summary(s: dict) -> None:
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in s["metrics"].items())
    typer.echo(f"adapter  {s['output']}  ({s['method']} on {s['base']}, {s['task']})")
    typer.echo(f"eval     {metrics}")
    typer.echo(
        f"cost     {s['trainable_params']:,} trainable params, adapter {s['adapter_bytes'] / 1e6:.2f} MB, "
        f"{s['train_samples_per_second']:.1f} train samples/s, {s['seconds']:.0f} s"
    )


def _builtin_recipe(name: str) -> Path:
    from peftkit.recipes import recipe_path

    return recipe_path(name)
