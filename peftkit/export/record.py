"""``export.json``, the manifest of an export folder: the one typed model its writer and its readers use.

Fields are declared in the order `peftkit export` writes them, and a record is dumped with only the keys it was
built or read with, so files round-trip unchanged; keys this version does not know are kept as extras.
"""

from __future__ import annotations

from pathlib import Path

from peftkit.artifacts.io import read_json
from peftkit.artifacts.manifest import BaseIdentity, Record, validated
from peftkit.artifacts.names import EXPORT_MANIFEST

FORMAT_VERSION = 1


class ExportSource(Record):
    """The adapter the export was made from."""

    adapter: str  # absolute path of the adapter folder
    method: str
    task: str
    labels: list[str] | None = None
    base: BaseIdentity  # name + sha256 only
    quant: str = "none"


class AdaLoraFolding(Record):
    """How AdaLoRA's SVD triplets were folded into LoRA's A (see `peftkit.methods.adalora.to_lora`)."""

    init_r: int
    lora_alpha: int | float
    folded_scale: float


class LoraSection(Record):
    """The exported LoRA: its adapter_config essentials and the rank of every adapted module."""

    task_type: str | None = None
    r: int
    lora_alpha: int | float
    target_modules: list[str] | str | None = None
    modules: int
    max_rank: int
    ranks: dict[str, int]  # module path -> rank
    dropped_modules: list[str] | None = None  # converted adapters: modules pruned to rank 0
    adalora: AdaLoraFolding | None = None
    causal_lm_architecture: str | None = None  # --to vllm: the class the module paths were checked against


class HeadSection(Record):
    """Where the task head went: its weights file, its description file, its tensor shapes."""

    file: str
    info: str
    tensors: dict[str, list[int]]


class MergedSection(Record):
    """The merged transformers model (``--merge``)."""

    architecture: str
    dtype: str
    num_outputs: int


class ExportRecord(Record):
    """``export.json``: where an export came from and what it holds."""

    format_version: int = FORMAT_VERSION
    target: str
    merged: bool
    source: ExportSource
    peftkit_version: str
    versions: dict[str, str] = {}
    merged_model: MergedSection | None = None
    lora: LoraSection | None = None
    head: HeadSection | None = None
    notes: list[str] = []  # what to know before serving it; also printed as warnings
    files: list[str] = []


def read_export_record(folder: str | Path) -> ExportRecord:
    """The ``export.json`` of an export folder, validated."""
    path = Path(folder) / EXPORT_MANIFEST
    data = read_json(path)
    return validated(ExportRecord, data, path)
