"""The task head beside a LoRA export (``head.safetensors`` + ``head.json``): vLLM and LoRAX serve generation and
have no place for a classification head, so it travels as its own file with what a user needs to apply it."""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.artifacts.io import write_json
from peftkit.artifacts.manifest import Manifest
from peftkit.artifacts.names import HEAD_INFO, HEAD_WEIGHTS, WEIGHTS
from peftkit.export.architecture import is_decoder
from peftkit.export.lora import split_head
from peftkit.export.record import HeadSection
from peftkit.tasks import TASKS

# How to turn the head's outputs into the task's answer, per task: the task spec's own words.
DECODE = {name: task.decode_text for name, task in TASKS.items()}


def write_head(folder: Path, manifest: Manifest, tmp: Path) -> HeadSection:
    """Write the adapter's task head and its description into `tmp`; returns its record."""
    from safetensors.torch import load_file, save_file

    _, head = split_head(load_file(str(folder / WEIGHTS)), manifest.head_names)
    base = manifest.base
    info = {
        "task": manifest.task,
        "labels": manifest.labels,
        "num_outputs": manifest.num_outputs,
        "modules": manifest.head_names,
        "tensors": {k: list(v.shape) for k, v in sorted(head.items())},
        "applies_to": head_input(manifest),
        "decode": DECODE[manifest.task],
        # What `decode` calls temperature and threshold.value (absent: 1 and argmax, adapters written before them).
        **{k: v for k, v in (("calibration", manifest.calibration), ("threshold", manifest.threshold)) if v},
        "base": {"name": base.name, "sha256": base.sha256},
    }
    save_file(
        {k: v.contiguous() for k, v in head.items()},
        str(tmp / HEAD_WEIGHTS),
        metadata={"task": manifest.task, "labels": json.dumps(manifest.labels, ensure_ascii=False)},
    )
    write_json(tmp / HEAD_INFO, info)
    return HeadSection(file=HEAD_WEIGHTS, info=HEAD_INFO, tensors=info["tensors"])


def head_input(manifest: Manifest) -> str:
    """What hidden state the head reads, for this base's architecture."""
    if is_decoder(manifest.base.model_type or ""):
        return (
            "h = the final hidden state (after the model's last norm) of each text's last non-padding token, as "
            "*ForSequenceClassification computes it"
        )
    return (
        "h = what *ForSequenceClassification feeds its classifier; for BERT that is the pooler output "
        "tanh(pooler.dense(hidden state of [CLS])), computed with the base's own pooler weights"
    )


def head_text(manifest: Manifest) -> str:
    """One sentence: what the head applies to, how to decode its outputs, the labels in order."""
    return (
        f"{head_input(manifest)}; then {DECODE[manifest.task]} "
        f"(labels in order: {', '.join(manifest.labels or []) or '-'})."
    )
