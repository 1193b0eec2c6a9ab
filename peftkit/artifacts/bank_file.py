"""``bank.json``, the index of an adapter bank: the one typed model its writers (segment training, `build_bank`) and
readers (`AdapterBank`, inspect, predict) use, with the rules an adapter must meet to join a bank."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from peftkit.artifacts.io import read_json, write_text_atomic
from peftkit.artifacts.manifest import Manifest, Record, validated
from peftkit.artifacts.names import BANK_FILE, GLOBAL
from peftkit.errors import PeftkitError

BANK_FORMAT = 1
Fallback = Literal["global", "error"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BankBase(Record):
    name: str
    sha256: str


class BankEntry(Record):
    """One adapter of the bank: its folder (relative to the bank), training rows and held-out metrics."""

    path: str
    train_rows: int | None = None
    metrics: dict[str, Any] = {}

    @classmethod
    def of(cls, manifest: Manifest, name: str) -> BankEntry:
        return cls(path=name, train_rows=manifest.data.train_rows, metrics=manifest.metrics)


class BankFile(Record):
    format_version: int = 0
    base: BankBase
    method: str
    task: str
    labels: list[str] | None = None
    num_outputs: int
    quant: str = "none"
    dtype: str = "auto"  # "auto": written before the dtype was resolved at training time
    pooling: str | None = None
    max_length: int
    segment_column: str | None = None
    fallback: Fallback
    segments: dict[str, str]  # segment value -> adapter name
    adapters: dict[str, BankEntry]  # adapter name -> entry
    segment_evaluation: dict[str, dict[str, Any]] | None = None  # set by segment training, not by build_bank
    config: dict[str, Any] = {}

    @classmethod
    def like(cls, manifest: Manifest, **fields: Any) -> BankFile:
        """A bank for adapters like `manifest`'s: its base, method, task, labels, head, dtype and pooling."""
        return cls(
            format_version=BANK_FORMAT,
            base=BankBase(name=manifest.base.name, sha256=manifest.base.sha256),
            method=manifest.method,
            task=manifest.task,
            labels=manifest.labels,
            num_outputs=manifest.num_outputs,
            quant=manifest.quant,
            dtype=manifest.trained_dtype,
            pooling=manifest.pooling,
            max_length=manifest.max_length,
            **fields,
        )

    def write(self, folder: Path) -> None:
        """Write ``bank.json`` into `folder` atomically, so readers never see half of it."""
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(Path(folder) / BANK_FILE, text)

    def check_compatible(self, manifest: Manifest, folder: Path) -> None:
        """Refuse an adapter that cannot share the bank's base and head layout, naming what differs."""
        if manifest.base.sha256 != self.base.sha256:
            raise PeftkitError(
                f"adapter {folder} was trained on base {manifest.base.name} (sha256 "
                f"{manifest.base.sha256[:12]}), the bank's base is {self.base.name} (sha256 "
                f"{self.base.sha256[:12]}); a bank holds adapters of one base only"
            )
        for key in ("method", "task", "labels"):
            if getattr(manifest, key) != getattr(self, key):
                raise PeftkitError(
                    f"adapter {folder} has {key} {getattr(manifest, key)!r}, the bank {getattr(self, key)!r}; a "
                    "bank holds adapters of one method and task with the same labels"
                )
        if _own_pooling(manifest.pooling) != _own_pooling(self.pooling):
            raise PeftkitError(
                f"adapter {folder} pools with {manifest.pooling!r}, the bank's base with "
                f"{self.pooling!r}; a bank's adapters share one base and so one pooling"
            )
        dtype = manifest.trained_dtype
        if (
            "auto" not in (dtype, self.dtype) and dtype != self.dtype
        ):  # "auto": written before it was resolved
            raise PeftkitError(
                f"adapter {folder} was trained over a {dtype} base, the bank's base is {self.dtype}; a bank's "
                "adapters share one base, so retrain it with the bank's model.dtype"
            )
        if manifest.max_length != self.max_length:
            raise PeftkitError(
                f"adapter {folder} was trained with max_length {manifest.max_length}, the bank "
                f"uses {self.max_length}; retrain it with the bank's max_length"
            )


def _own_pooling(pooling: str | None) -> str | None:
    # cls and last are transformers' own pooling, as is no pooling key at all (folders from before it was a setting)
    return None if pooling in ("cls", "last") else pooling


def is_bank(folder: str | Path) -> bool:
    return (Path(folder) / BANK_FILE).is_file()


def read_bank_file(folder: str | Path) -> BankFile:
    path = Path(folder) / BANK_FILE
    if not path.is_file():
        raise PeftkitError(
            f"{folder} is not an adapter bank (no {BANK_FILE}); train one with --segment-column"
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise PeftkitError(f"{path}: not a bank file written by peftkit (a JSON object expected)")
    if data.get("format_version", 0) > BANK_FORMAT:
        raise PeftkitError(
            f"{path} was written by a newer peftkit (format {data['format_version']}); upgrade"
        )
    for key in ("base", "adapters", "segments", "fallback"):
        if key not in data:
            raise PeftkitError(f"{path}: missing key {key!r}; not a bank file written by peftkit")
    return validated(BankFile, data, path)


def adapter_folder_name(value: str) -> str:
    """A safe folder and adapter name for a segment value (which may hold '/', spaces or Chinese)."""
    if is_adapter_name(value) and value != GLOBAL:
        return value
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_.-")[:40]
    return f"{slug or 'segment'}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"


def is_adapter_name(name: str) -> bool:
    """Letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters."""
    return bool(_NAME.match(name))
