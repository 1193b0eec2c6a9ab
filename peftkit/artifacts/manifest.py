"""``peftkit.json``, the manifest of an adapter folder: the one typed model every writer and reader of it uses.

Fields are declared in the order `peftkit train` writes them, and a manifest is written back with only the keys it
was built or read with, so files round-trip unchanged. Keys this version does not know (``segment``,
``warm_start_from``... and whatever a later peftkit adds) are kept as extras.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from peftkit.artifacts.io import read_json, write_json
from peftkit.artifacts.names import MANIFEST, PICKLE_WEIGHTS, WEIGHTS
from peftkit.errors import PeftkitError

FORMAT_VERSION = 1


class Record(BaseModel):
    """A JSON file's typed model: unknown keys kept, written back with only the keys it was built or read with."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class BaseIdentity(Record):
    """The base an adapter attaches to: its name (alias, or absolute path) and the sha256 of its weights."""

    name: str
    sha256: str
    model_type: str | None = None
    architecture: str | None = None


class DataSummary(Record):
    train_source: str | None = None
    eval_source: str | None = None
    train_rows: int = 0
    eval_rows: int = 0
    synthetic: bool = False


class TrainSummary(Record):
    steps: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0


class Manifest(Record):
    format_version: int = 0
    method: str
    pooling: str | None = None  # resolved model.pooling; absent before it was a setting (transformers' own)
    head_init: str | None = None  # resolved model.head_init; only training reads it
    dtype: str | None = None  # resolved model.dtype; absent before it was resolved at training time
    peft_native: bool = False
    task: str
    labels: list[str] | None = None
    num_outputs: int
    base: BaseIdentity
    quant: str = "none"
    head_names: list[str] = []
    trainable_params: int = 0
    total_params: int = 0
    trainable_percent: float = 0.0
    metrics: dict[str, Any] = {}
    # Fitted on the held-out rows after training (`peftkit.tasks.decide`); absent in adapters written before them,
    # which decode as they always did (no temperature, argmax).
    calibration: dict[str, Any] | None = None
    threshold: dict[str, Any] | None = None
    data: DataSummary = DataSummary()
    train: TrainSummary = TrainSummary()
    config: dict[
        str, Any
    ] = {}  # the resolved RunConfig as JSON (a dict: older configs need not validate today)
    versions: dict[str, str] = {}
    versions_vs_lock: dict[str, Any] | None = None
    adapter_bytes: int | None = None

    @property
    def trained_dtype(self) -> str:
        """The base dtype the adapter trained over: the resolved ``dtype``, or for manifests written before it was
        resolved, the configured ``model.dtype`` (``auto``; `peftkit.models.stored_dtype` says what that meant)."""
        return self.dtype or self.config.get("model", {}).get("dtype", "auto")

    @property
    def decision(self):
        """The `peftkit.tasks.Decision` (temperature, threshold) every prediction of this adapter is decoded with."""
        from peftkit.tasks import Decision

        return Decision.from_json(self.calibration, self.threshold)

    @property
    def max_length(self) -> int:
        return self.config["data"]["max_length"]

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / MANIFEST, self.to_json())


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an adapter folder, after checking the folder is one peftkit can load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PeftkitError(f"adapter folder {folder} does not exist")
    if not (folder / WEIGHTS).is_file():
        if (folder / PICKLE_WEIGHTS).is_file():
            raise PeftkitError(
                f"adapter {folder} holds a pickle {PICKLE_WEIGHTS}; peftkit loads safetensors only"
            )
        raise PeftkitError(f"{folder} has no {WEIGHTS}: not an adapter folder written by peftkit train")
    path = folder / MANIFEST
    if not path.is_file():
        raise PeftkitError(f"{folder} has no {MANIFEST}: not an adapter folder written by peftkit train")
    try:
        data = read_json(path)
    except UnicodeDecodeError:
        raise PeftkitError(f"{path} is not UTF-8 text; the adapter folder is damaged") from None
    if not isinstance(data, dict):
        raise PeftkitError(f"{path}: a JSON object expected; not a {MANIFEST} written by peftkit")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise PeftkitError(
            f"adapter {folder} was written by a newer peftkit (format {data['format_version']}); upgrade"
        )
    return validated(Manifest, data, path)


def validated(model: type[Record], data: Any, path: Path):
    """`data` as `model`, or a one-line error naming the file and the first key that is missing or wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        raise PeftkitError(
            f"{path}: {where}: {err['msg'].lower()}; not a {path.name} written by peftkit"
        ) from None


def check_base(manifest: Manifest, folder: Path, base_name: str, base_sha: str) -> None:
    """Refuse a base whose weights differ from the one the adapter was trained on (peft would load it silently)."""
    want = manifest.base
    if want.sha256 != base_sha:
        raise PeftkitError(
            f"adapter {folder} was trained on base {want.name} (sha256 {want.sha256[:12]}) but the base given, "
            f"{base_name}, has sha256 {base_sha[:12]}; pass the matching base"
        )


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("peftkit", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
