"""``peftkit export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peftkit.cli.common import JsonFlag, command, emit, stdout_to_stderr


@command
def export(
    adapter: Annotated[
        Path, typer.Option(help="Adapter folder written by `peftkit train` (lora or adalora).")
    ],
    to: Annotated[
        str,
        typer.Option(
            help="vllm: plain LoRA for vLLM/LoRAX on a decoder base (task_type CAUSAL_LM); peft-lora: plain "
            "peft LoRA for any base."
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder to write; refused when it exists and is not empty.")],
    merge: Annotated[
        bool,
        typer.Option(
            help="Write the base with the adapter merged in (task head included) as a transformers folder "
            "instead of LoRA weights. Not for adapters trained on an 8-bit base."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output.")] = False,
    base: Annotated[
        Optional[str],
        typer.Option(
            help="Base model when the manifest's is not available here (its weights must match the manifest's "
            "sha256); needed only for --to vllm and --merge."
        ),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Export an adapter for another runtime: plain PEFT LoRA that vLLM, LoRAX and plain peft load (AdaLoRA is
    converted to LoRA exactly, ranks per module kept), or with --merge a full transformers model with the adapter
    merged in. LoRA exports carry the adapted transformer layers only: the classification head, which vLLM and
    LoRAX cannot serve, is written beside them as head.safetensors with head.json saying how to apply it.
    Prefix and bottleneck adapters have no LoRA form and are refused. See docs/export.md.

    Examples:

    ```
    peftkit export --adapter runs/intent-adalora --to vllm \\
        --output exports/intent-vllm
    peftkit export --adapter runs/reviews-minilm-l6-lora \\
        --to peft-lora --output exports/reviews-merged --merge
    ```
    """
    from peftkit.export import export_adapter

    with stdout_to_stderr():
        summary = export_adapter(adapter, to, output, merge=merge, overwrite=overwrite, base=base)
    emit(summary, json_, lambda: _print(summary))


def _print(summary: dict) -> None:
    from peftkit.export.record import ExportRecord

    record, output = ExportRecord.model_validate(summary), summary["output"]
    if record.merged:
        m = record.merged_model
        typer.echo(
            f"wrote {m.architecture} with the {record.source.method} adapter merged in ({m.dtype}) to {output}"
        )
        return
    lora = record.lora
    converted = " (converted from AdaLoRA)" if lora.adalora is not None else ""
    typer.echo(
        f"wrote {record.target} LoRA{converted} to {output}: {lora.modules} modules, ranks up "
        f"to {lora.max_rank}; task head in {record.head.file}"
    )
