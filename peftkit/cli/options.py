"""Option types shared by commands, defined once: ``train`` and ``doctor`` take them all (and turn them into a run
config with `run_config`); ``compare`` and friends reuse some."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional, get_args

import typer

from peftkit import config
from peftkit.methods import METHODS

# The closed choices come from the config's own types: typer lists and checks them, the config checks them again.
Method = Enum("Method", {name: name for name in METHODS}, type=str)
Task = Enum("Task", {t: t for t in get_args(config.Task)}, type=str)
Quant = Enum("Quant", {q: q for q in get_args(config.Quant)}, type=str)
ReportTo = Enum("ReportTo", {r: r for r in ("tensorboard", "wandb", "mlflow")}, type=str)

_methods_help = "; ".join(
    f"**{s.name}**: {s.summary} (default lr {s.default_lr:g})" for s in METHODS.values()
)


def _opt(kind, help: str, *names: str):
    return Annotated[Optional[kind], typer.Option(*names, help=help)]


RecipeOpt = _opt(
    str,
    "Recipe: a built-in name (peftkit recipes ls) or a YAML file; flags below override it. Without --recipe and --data: the built-in default recipe.",
)
ModelOpt = _opt(
    str,
    "Base model: smollm2-135m, minilm-l6, multilingual-e5-small, gemma3-270m, a local Hugging Face folder or a .gguf file.",
)
MethodOpt = _opt(Method, f"PEFT method. {_methods_help}.")
DataOpt = _opt(
    str,
    "Training rows: CSV, JSONL or Parquet file, or packaged data: builtin:reviews, builtin:cdnow/churn (value, "
    "conversion), builtin:amazon-snippets[/polar], builtin:synth/<task> (docs/data.md).",
)
EvalDataOpt = _opt(str, "Held-out rows; default: a seeded split of --data (duplicates removed first).")
TextColumnOpt = _opt(str, "Column holding the text.")
TemplateOpt = _opt(
    str, "Build the text from columns: 'orders in 90 days: {orders_90d}; last search: {last_query}'."
)
LabelColumnOpt = _opt(str, "Column holding the label (or the score, for regression).")
TaskOpt = _opt(
    Task, "classification (unordered labels), ordinal (ordered: give --labels), regression (a number)."
)
LabelsOpt = _opt(str, "Label order, comma-separated: weak,medium,strong. Required for ordinal text labels.")
QuantOpt = _opt(
    Quant, "8bit: load the base with bitsandbytes LLM.int8 (CUDA or CPU); adapter and head stay fp32."
)
EpochsOpt = _opt(float, "Passes over the training rows.")
MaxStepsOpt = _opt(int, "Stop after this many optimizer steps (overrides --epochs).")
BatchSizeOpt = _opt(int, "Rows per batch per device.")
LrOpt = _opt(float, "Learning rate; default: the method's own.")
SeedOpt = _opt(int, "Seed for the split, the head's init and the data order.")
MaxLengthOpt = _opt(int, "Tokens kept per row; longer rows are truncated.")
ReportToOpt = _opt(list[ReportTo], "Also log to tensorboard, wandb or mlflow (repeatable).")
Fallback = Enum("Fallback", {"global": "global", "error": "error"}, type=str)
SegmentColumnOpt = _opt(
    str,
    "Train an adapter bank: a global adapter on all rows, then one adapter per value of this column "
    "(platform, user segment); --output is then the bank folder.",
)
MinSegmentRowsOpt = _opt(
    int, "Segments with fewer training rows get no adapter of their own and fall back (default 200)."
)
WarmStartOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--warm-start/--no-warm-start",
        help="Start each segment adapter from the global one (default) or from scratch.",
    ),
]
FallbackOpt = _opt(
    Fallback,
    "What answers a segment without its own adapter: global (the global adapter, default) or error.",
)
SetOpt = _opt(
    list[str],
    "Override any recipe key: --set method.r=16 --set train.warmup_ratio=0.1 (repeatable).",
    "--set",
)


def run_overrides(
    *,
    model=None,
    method=None,
    data=None,
    eval_data=None,
    text_column=None,
    template=None,
    label_column=None,
    task=None,
    labels=None,
    quant=None,
    epochs=None,
    max_steps=None,
    batch_size=None,
    lr=None,
    seed=None,
    max_length=None,
    report_to=None,
    segment_column=None,
    min_segment_rows=None,
    warm_start=None,
    fallback=None,
    set_=None,
) -> dict:
    """The shared flags as dotted config overrides (`peftkit.config.load_config`); unset flags are left out."""
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
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
        "data.max_length": max_length,
        "train.report_to": [r.value for r in report_to] if report_to else None,
        "segments.column": segment_column,
        "segments.min_rows": min_segment_rows,
        "segments.warm_start": warm_start,
        "segments.fallback": fallback.value if fallback else None,
    }
    return {k: v for k, v in flags.items() if v is not None} | config.parse_set(set_ or [])


def flag_overrides(params: dict) -> dict:
    """`run_overrides` from a command's parameters: pass `locals()` before binding any local named like a flag.

    `train` and `doctor` take the same two dozen flags (typer reads them from each signature, so the signatures
    must list them); this picks the shared ones by name so the list is not written out again at every call.
    """
    import inspect

    shared = inspect.signature(run_overrides).parameters
    return run_overrides(**{name: value for name, value in params.items() if name in shared})


DEFAULT_RECIPE = "reviews/multilingual-e5-small_lora.yaml"


def recipe_or_default(recipe: str | None, data: str | None) -> str | None:
    """--recipe, or the built-in default recipe when neither --recipe nor --data is given."""
    return DEFAULT_RECIPE if recipe is None and data is None else recipe


def run_config(params: dict[str, Any]) -> config.RunConfig:
    """The run a `train` or `doctor` call describes, from its parameters (pass `locals()`): the recipe
    (`recipe_or_default`) with the flags and --output over it. Raises PeftkitError for a bad recipe or flag."""
    from peftkit.recipes import recipe_path

    overrides = flag_overrides(params)
    if params.get("output") is not None:
        overrides["output"] = str(params["output"])
    recipe = recipe_or_default(params.get("recipe"), params.get("data"))
    return config.load_config(recipe_path(recipe) if recipe else None, overrides)
