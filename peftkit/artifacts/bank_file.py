"""``bank.json``: the typed models of an adapter bank's index, used by its writers (segment training, `build_bank`,
``peftkit bank``) and readers (`AdapterBank`, inspect, predict), with the rules an adapter must meet to join a bank.

Two kinds of folder carry a ``bank.json``:

- one question (format 1, `BankFile`): one task, labels, method; segment -> adapter, fallback, adapters. What
  ``peftkit train --segment-column`` and `build_bank` write, and every bank written before questions existed.
- a bank of questions (format 2, `BankIndex`): one base (name, weights hash, quant, dtype) and named questions,
  each a one-question folder inside it::

      banks/shop/
        bank.json          {"format_version": 2, "base": ..., "questions": {"intent": {"path": "intent"}, ...}}
        intent/            a one-question bank (bank.json format 1, global/, hotel/ ...)
        churn/

`read_bank_index` reads either as a `BankIndex`: a one-question folder is a bank of one question named
``default`` that lives in the folder itself.
"""

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

BANK_FORMAT = 2  # a bank of questions (`BankIndex`)
QUESTION_FORMAT = 1  # one question's bank (`BankFile`)
DEFAULT_QUESTION = "default"  # the name of the one question of a format-1 folder
Fallback = Literal["global", "error"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BankBase(Record):
    name: str
    sha256: str


class CanaryEntry(Record):
    """A canary of one adapter (`peftkit.artifacts.versions.set_canary`): version ``version`` answers the records
    whose ``key_column`` value hashes into the first ``share`` of [0, 1); the others, and records without the key,
    get the production version."""

    version: int
    share: float
    key_column: str


class BankEntry(Record):
    """One adapter of the bank: its folder (relative to the bank), training rows and held-out metrics.

    ``version``: the version in production (its folder is ``path``, ``versions/<adapter>/v<N>``); absent in banks
    written before versions, whose folder counts as version 1. ``canary``: a version answering a share of the traffic
    (`peftkit.artifacts.versions`)."""

    path: str
    train_rows: int | None = None
    metrics: dict[str, Any] = {}
    version: int | None = None
    canary: CanaryEntry | None = None

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
            format_version=QUESTION_FORMAT,
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
    """The one-question bank file in `folder`; a bank of questions is refused, naming its questions' folders."""
    path = Path(folder) / BANK_FILE
    data = _bank_json(folder)
    if "questions" in data:
        raise PeftkitError(
            f"{folder} is a bank of questions ({', '.join(data['questions']) or 'none'}); open it with "
            "AdapterBank.open, or one question's folder inside it"
        )
    if data.get("format_version", 0) > QUESTION_FORMAT:
        raise PeftkitError(
            f"{path} was written by a newer peftkit (format {data['format_version']}); upgrade"
        )
    for key in ("base", "adapters", "segments", "fallback"):
        if key not in data:
            raise PeftkitError(f"{path}: missing key {key!r}; not a bank file written by peftkit")
    return validated(BankFile, data, path)


class QuestionEntry(Record):
    """One question of a bank: the folder of its one-question bank, relative to the bank."""

    path: str


class BankIndex(Record):
    """A bank of questions over one base: what every question's adapters must share, and where each question is."""

    format_version: int = BANK_FORMAT
    base: BankBase
    quant: str = "none"
    dtype: str = "auto"
    questions: dict[str, QuestionEntry]

    def write(self, folder: Path) -> None:
        """Write ``bank.json`` into `folder` atomically, so readers never see half of it."""
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(Path(folder) / BANK_FILE, text)

    def check_question(self, name: str, question: BankFile, folder: Path) -> None:
        """Refuse a question whose adapters cannot share this bank's base in memory, naming both sides."""
        if not is_adapter_name(name):
            raise PeftkitError(
                f"question name {name!r}: use letters, digits, '_', '.' or '-' (up to 64), starting with a letter "
                "or digit"
            )
        if question.base.sha256 != self.base.sha256:
            raise PeftkitError(
                f"question {name!r} ({folder}) was trained on base {question.base.name} (sha256 "
                f"{question.base.sha256[:12]}), the bank's base is {self.base.name} (sha256 {self.base.sha256[:12]}); "
                "a bank holds questions of one base only"
            )
        if question.quant != self.quant:
            raise PeftkitError(
                f"question {name!r} ({folder}) runs its base with quant {question.quant}, the bank with "
                f"{self.quant}; a bank loads its base once, so retrain it with the bank's model.quant"
            )
        if "auto" not in (question.dtype, self.dtype) and question.dtype != self.dtype:
            raise PeftkitError(
                f"question {name!r} ({folder}) was trained over a {question.dtype} base, the bank's base is "
                f"{self.dtype}; a bank loads its base once, so retrain it with the bank's model.dtype"
            )

    @classmethod
    def like(cls, question: BankFile, **fields: Any) -> BankIndex:
        """An index for questions over `question`'s base, quant and dtype."""
        return cls(
            format_version=BANK_FORMAT,
            base=question.base,
            quant=question.quant,
            dtype=question.dtype,
            **fields,
        )


def read_bank_index(folder: str | Path) -> tuple[BankIndex, bool]:
    """The index of the bank in `folder` and whether it is a one-question folder (format 1, read as one question
    named ``default`` living in `folder` itself)."""
    path = Path(folder) / BANK_FILE
    data = _bank_json(folder)
    if "questions" not in data:
        question = read_bank_file(folder)
        return BankIndex.like(question, questions={DEFAULT_QUESTION: QuestionEntry(path=".")}), True
    if data.get("format_version", 0) > BANK_FORMAT:
        raise PeftkitError(
            f"{path} was written by a newer peftkit (format {data['format_version']}); upgrade"
        )
    index = validated(BankIndex, data, path)
    if not index.questions:
        raise PeftkitError(f"{path}: a bank of no questions; add one with peftkit bank add")
    return index, False


def _bank_json(folder: str | Path) -> dict:
    path = Path(folder) / BANK_FILE
    if not path.is_file():
        raise PeftkitError(
            f"{folder} is not an adapter bank (no {BANK_FILE}); train one with --segment-column or build one with "
            "peftkit bank build"
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise PeftkitError(f"{path}: not a bank file written by peftkit (a JSON object expected)")
    return data


def adapter_folder_name(value: str) -> str:
    """A safe folder and adapter name for a segment value (which may hold '/', spaces or Chinese)."""
    if is_adapter_name(value) and value != GLOBAL:
        return value
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_.-")[:40]
    return f"{slug or 'segment'}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"


def is_adapter_name(name: str) -> bool:
    """Letters, digits, '_', '.' or '-', starting with a letter or digit, at most 64 characters."""
    return bool(_NAME.match(name))
