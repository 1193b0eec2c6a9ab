"""``peftkit train``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr
from peftkit.cli.options import (
    BatchSizeOpt,
    DataOpt,
    EpochsOpt,
    EvalDataOpt,
    FallbackOpt,
    LabelColumnOpt,
    LabelsOpt,
    LrOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    MethodOpt,
    MinSegmentRowsOpt,
    ModelOpt,
    QuantOpt,
    RecipeOpt,
    ReportToOpt,
    SeedOpt,
    SegmentColumnOpt,
    SetOpt,
    TaskOpt,
    TemplateOpt,
    TextColumnOpt,
    WarmStartOpt,
    run_config,
)

if TYPE_CHECKING:
    from peftkit.training.loop import TrainResult


# This command's own flags; the shared ones are in peftkit.cli.options.
_OutputOpt = Annotated[
    Optional[Path], typer.Option(help="Adapter folder to write; default runs/<data>-<model>-<method>.")
]
_OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing, different adapter in --output.")]
_ResumeOpt = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]


@command
def train(
    recipe: RecipeOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    text_column: TextColumnOpt = None,
    template: TemplateOpt = None,
    label_column: LabelColumnOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
    quant: QuantOpt = None,
    output: _OutputOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    max_length: MaxLengthOpt = None,
    report_to: ReportToOpt = None,
    segment_column: SegmentColumnOpt = None,
    min_segment_rows: MinSegmentRowsOpt = None,
    warm_start: WarmStartOpt = None,
    fallback: FallbackOpt = None,
    set_: SetOpt = None,
    overwrite: _OverwriteOpt = False,
    resume: _ResumeOpt = False,
    json_: JsonFlag = False,
) -> None:
    """Train one adapter and write its folder (weights, manifest, model card, loss curve); with
    --segment-column, train an adapter bank: a global adapter and one per segment value, each evaluated on its
    segment's held-out rows against the global adapter.

    Examples:

    ```
    peftkit train                  # default recipe: multilingual-e5-small + LoRA, real reviews
    peftkit train --model smollm2-135m --method adalora --quant 8bit \\
        --data reviews.csv --text-column text --label-column label \\
        --task classification --output runs/intent-adalora
    peftkit train --recipe reviews/minilm-l6_lora \\
        --set method.r=16 --epochs 2
    peftkit train --recipe reviews/minilm-l6_lora_by-platform \\
        --output banks/reviews          # a bank: global + hotel/book/laptop
    peftkit train --data users.csv --text-column text --label-column churn \\
        --segment-column platform --min-segment-rows 500 --output banks/churn
    ```
    """
    from peftkit.training.loop import train as run_training

    cfg = run_config(locals())
    if cfg.segments is not None:
        _train_bank(cfg, overwrite=overwrite, resume=resume, json_=json_)
        return
    with stdout_to_stderr():
        result = run_training(cfg, overwrite=overwrite, resume=resume)
    summary = _summary(result)
    emit(summary, json_, lambda: _print_summary(summary))


def _summary(result: TrainResult) -> dict:
    """What `peftkit train` reports about the adapter it wrote (the JSON of --json)."""
    m = result.manifest
    return {
        "output": str(result.output),
        "method": m.method,
        "base": m.base.name,
        "task": m.task,
        "metrics": m.metrics,
        "trainable_params": m.trainable_params,
        "adapter_bytes": m.adapter_bytes or 0,  # only rank 0 writes (and sizes) the adapter
        "train_samples_per_second": m.train.samples_per_second,
        "seconds": m.train.seconds,
    }


def _print_summary(s: dict) -> None:
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in s["metrics"].items())
    typer.echo(f"adapter  {s['output']}  ({s['method']} on {s['base']}, {s['task']})")
    typer.echo(f"eval     {metrics}")
    typer.echo(
        f"cost     {s['trainable_params']:,} trainable params, adapter {s['adapter_bytes'] / 1e6:.2f} MB, "
        f"{s['train_samples_per_second']:.1f} train samples/s, {s['seconds']:.0f} s"
    )


def _train_bank(cfg, *, overwrite: bool, resume: bool, json_: bool) -> None:
    from peftkit.errors import PeftkitError
    from peftkit.training.segments import train_bank

    if resume:
        raise PeftkitError("--resume does not apply to --segment-column runs yet; rerun without --resume")
    with stdout_to_stderr():
        result = train_bank(cfg, overwrite=overwrite)
    summary = {
        "output": str(result.output),
        "method": result.bank.method,
        "segment_column": result.bank.segment_column,
        "segments": result.bank.segments,
        "segment_evaluation": result.segment_evaluation,
    }
    emit(summary, json_, lambda: _print_bank(summary, result.bank.task))


def _print_bank(s: dict, task: str) -> None:
    from peftkit.tasks import TASKS

    primary = TASKS[task].primary
    key = primary.name
    typer.echo(f"bank  {s['output']}  ({s['method']}, one adapter per {s['segment_column']} + global)")
    typer.echo(
        f"{'segment':<16}{'adapter':<16}{'train':>7}{'eval':>6}{'global ' + key:>17}{'own ' + key:>14}{'gain':>8}"
    )
    for value, r in s["segment_evaluation"].items():
        own, glob = r.get("own", {}).get(key), r.get("global", {}).get(key)
        # gain: how much better the segment's own adapter is than the global one (positive = better, either direction)
        gain = (
            f"{primary.better(own) - primary.better(glob):+.3f}"
            if own is not None and glob is not None
            else ""
        )
        typer.echo(
            f"{value[:15]:<16}{(r['adapter'] or '(global)')[:15]:<16}{r['train_rows']:>7}{r['eval_rows']:>6}"
            f"{'' if glob is None else f'{glob:.3f}':>17}{'' if own is None else f'{own:.3f}':>14}{gain:>8}"
        )
