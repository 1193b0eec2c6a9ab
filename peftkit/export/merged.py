"""The merged export (``--merge``): the base with the adapter merged into its weights, task head included, as a
plain transformers folder with its tokenizer."""

from __future__ import annotations

from pathlib import Path

from peftkit.artifacts.manifest import Manifest
from peftkit.export.record import MergedSection


def write_merged(folder: Path, manifest: Manifest, tmp: Path, base: str | None) -> MergedSection:
    """Write the merged model and tokenizer into `tmp`; returns its record."""
    from peftkit.inference.predictor import load_predictor

    # On the CPU in the adapter's own dtype: the merge is one matmul per module, and the result matches what
    # `peftkit.load` computes.
    predictor = load_predictor(folder, base=base, device="cpu")
    merged = predictor.model.merge_and_unload()
    labels = manifest.labels
    if manifest.task == "classification" and labels:
        merged.config.id2label = dict(enumerate(labels))
        merged.config.label2id = {lab: i for i, lab in enumerate(labels)}
    merged.save_pretrained(str(tmp), safe_serialization=True)
    predictor.tokenizer.save_pretrained(str(tmp))
    return MergedSection(
        architecture=type(merged).__name__,
        dtype=str(next(merged.parameters()).dtype).removeprefix("torch."),
        num_outputs=manifest.num_outputs,
    )
