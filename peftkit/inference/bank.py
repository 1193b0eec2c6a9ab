"""Adapter banks: one base model in memory, one small adapter per platform or user segment, switched per row.

    banks/reviews/
      bank.json        segment -> adapter, fallback, base identity (sha256), per-adapter and per-segment metrics
      global/          an adapter folder (peftkit train), trained on every row
      hotel/ book/ ... one adapter folder per segment

    bank = AdapterBank.open("banks/reviews")
    bank.predict(["房间很干净", "书的纸质很差"], segments=["hotel", "book"])

Opening a bank loads the base once and checks every adapter against it. Adapters load lazily on first use and stay
in memory (at most ``max_loaded``, least recently used evicted first), so switching between loaded adapters touches
no file. A batch whose rows belong to different segments runs in one forward pass where the method allows it (LoRA:
peft's per-row ``adapter_names``), otherwise one pass per adapter group, and comes back in input order either way.

A segment with no adapter of its own follows the bank's fallback: ``global`` answers it with the global adapter,
``error`` refuses it. There is no fallback to the bare base: the classification head is trained with the adapter,
so a base without one would answer at random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.bank_file import BankEntry, BankFile, Fallback, is_adapter_name, read_bank_file
from peftkit.artifacts.io import atomic_folder
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.errors import PeftkitError
from peftkit.inference.adapter_cache import AdapterCache
from peftkit.inference.batcher import logits_by_adapter
from peftkit.inference.predictor import Prediction, Predictor, decode_predictions, prediction_columns


class UnknownSegmentError(PeftkitError, KeyError):
    """A segment the bank has no adapter for, and no fallback to answer it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AdapterBank:
    """A base model with a bank's adapters, answering each row with its segment's adapter. Thread-safe.

    Build it with `AdapterBank.open`. ``segments`` maps segment value -> adapter name; ``adapters`` maps adapter
    name -> its entry in the bank file (folder, metrics); ``loaded`` lists the adapters in memory, least recently
    used first.
    """

    def __init__(
        self,
        folder: Path,
        bank: BankFile,
        *,
        quant: str | None,
        device: str | None,
        max_loaded: int,
        batch_size: int,
    ):
        from peftkit import models
        from peftkit.methods import METHODS
        from peftkit.tasks import TASKS

        if max_loaded < 1:
            raise PeftkitError(f"max_loaded must be at least 1, got {max_loaded}")
        self.folder, self.bank = folder, bank
        self.spec = METHODS[bank.method]
        if self.spec.full_model:
            raise PeftkitError(
                f"bank {folder}: method {bank.method} saves whole models; a bank needs adapters"
            )
        self.task = TASKS[bank.task]
        self.labels: list[str] | None = bank.labels
        self.max_loaded, self.batch_size = max_loaded, batch_size
        ref = models.resolve(bank.base.name)
        if ref.sha256 != bank.base.sha256:
            raise PeftkitError(
                f"bank {folder} was built on base {bank.base.name} with sha256 {bank.base.sha256[:12]}, "
                f"but that base here has sha256 {ref.sha256[:12]}; install the matching base"
            )
        # every adapter is checked now, not at its first request
        self._manifests = {name: self._checked(self._folder_of(name)) for name in bank.adapters}
        self.device = device or models.default_device()
        self.quant = quant or bank.quant
        self.tokenizer = models.load_tokenizer(ref)
        base, _ = models.load_base(
            ref,
            bank.num_outputs,
            quant=self.quant,
            dtype=models.stored_dtype(bank.dtype, self.device),
            pooling=bank.pooling,  # None in banks from before pooling was a setting: transformers' own
            device=self.device,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self._cache = AdapterCache(
            self.spec, base, max_loaded=max_loaded, folder_of=self._folder_of, owner=f"bank {folder}"
        )
        self._lock = self._cache.lock

    @classmethod
    def open(
        cls,
        folder: str | Path,
        *,
        quant: str | None = None,
        device: str | None = None,
        max_loaded: int = 8,
        batch_size: int = 64,
        preload: bool = False,
    ) -> AdapterBank:
        """Open a bank folder: load its base once and check every adapter against it.

        Args:
            folder: a bank written by ``peftkit train --segment-column``.
            quant: ``"none"`` or ``"8bit"``; default: what the adapters were trained with.
            device: default CUDA when available.
            max_loaded: adapters kept in memory at once; the least recently used is evicted beyond it.
            batch_size: rows per forward pass.
            preload: load adapters now (up to ``max_loaded``) instead of on first use.
        """
        folder = Path(folder)
        bank = cls(
            folder,
            read_bank_file(folder),
            quant=quant,
            device=device,
            max_loaded=max_loaded,
            batch_size=batch_size,
        )
        if preload:
            for name in list(bank.adapters)[:max_loaded]:
                bank._cache.ensure([name])
        return bank

    # -- what the bank holds --------------------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, BankEntry]:
        return self.bank.adapters

    @property
    def segments(self) -> dict[str, str]:
        return self.bank.segments

    @property
    def fallback(self) -> str:
        return self.bank.fallback

    @property
    def loaded(self) -> list[str]:
        return self._cache.loaded

    @property
    def model(self):
        """The base with the loaded adapters attached; None until the first one is loaded."""
        return self._cache.model

    def resolve(self, segment: str | None) -> str:
        """The adapter that answers `segment`: its own, else the fallback; `UnknownSegmentError` when there is none.

        ``None`` asks for the global adapter.
        """
        if segment is not None and segment in self.segments:
            return self.segments[segment]
        if segment is not None and segment in self.adapters:  # an adapter added by name answers for itself
            return segment
        if (segment is None or self.fallback == "global") and GLOBAL in self.adapters:
            return GLOBAL
        known = ", ".join(sorted(self.segments)) or "none"
        raise UnknownSegmentError(
            f"no adapter for segment {segment!r} and the bank's fallback is {self.fallback!r}; known segments: {known}"
        )

    def resolve_all(self, segments: list[str | None]) -> list[str]:
        """`resolve` for each segment, each distinct value resolved once."""
        resolved: dict[Any, str] = {}
        for segment in segments:
            if segment not in resolved:
                resolved[segment] = self.resolve(segment)
        return [resolved[s] for s in segments]

    def describe(self) -> dict[str, Any]:
        """What the bank holds, as JSON: base, method, task, labels, segments, fallback, adapters with metrics."""
        with self._lock:
            loaded = set(self._cache.loaded)
        return {
            "bank": str(self.folder),
            "base": self.bank.base.to_json(),
            "method": self.bank.method,
            "task": self.bank.task,
            "labels": self.labels,
            "quant": self.quant,
            "fallback": self.fallback,
            "segment_column": self.bank.segment_column,
            "segments": dict(self.segments),
            "adapters": {
                name: {
                    "path": entry.path,
                    "loaded": name in loaded,
                    "metrics": self._manifests[name].metrics,
                    "train_rows": self._manifests[name].data.train_rows,
                }
                for name, entry in self.adapters.items()
            },
            "segment_evaluation": self.bank.segment_evaluation or {},
        }

    # -- predicting -----------------------------------------------------------------------------------------------

    def predict(self, texts: list[str], segments: str | list[str | None] | None = None) -> list[Prediction]:
        """One `Prediction` per text, in order, each answered by its segment's adapter (``.adapter`` says which).

        ``segments``: one per text, or one for all, or None for the global adapter.
        """
        names = self._adapter_names(texts, segments)
        return decode_predictions(self.task, self.labels, self.logits(texts, names), names)

    def predict_columns(self, texts: list[str], segments) -> dict[str, list]:
        """Columns for a predictions file: ``prediction``, one ``prob_<label>`` per class, ``adapter``."""
        return prediction_columns(self.predict(texts, segments), self.labels)

    def _adapter_names(self, texts, segments) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap a single text in a list")
        if segments is None or isinstance(segments, str):
            return [self.resolve(segments)] * len(texts)
        if len(segments) != len(texts):
            raise PeftkitError(
                f"got {len(texts)} texts but {len(segments)} segments; give one segment per text"
            )
        return self.resolve_all(segments)

    def logits(self, texts: list[str], adapter_names: list[str]) -> np.ndarray:
        """Head outputs (N, num_outputs), row ``i`` through adapter ``adapter_names[i]``, in input order."""
        out = np.zeros((len(texts), self.bank.num_outputs), dtype=np.float32)
        if not texts:
            return out
        unknown = sorted(set(adapter_names) - set(self.adapters))
        if unknown:
            raise UnknownSegmentError(f"no adapter named {', '.join(unknown)} in bank {self.folder}")
        with self._lock:
            return logits_by_adapter(
                self._cache,
                texts,
                adapter_names,
                out,
                predictor_for=self._predictor,
                mixed_batch=self.spec.mixed_batch,
            )

    def _predictor(self, model) -> Predictor:
        return Predictor(
            model,
            self.tokenizer,
            task=self.bank.task,
            labels=self.labels,
            max_length=self.bank.max_length,
            adapter="",
            batch_size=self.batch_size,
        )

    def activate(self, name: str) -> None:
        """Make adapter `name` the active one, loading it first if needed (what the switch benchmark times)."""
        self._cache.activate(name)

    def close(self) -> None:
        """Drop the model and adapters from memory; the bank answers nothing after this."""
        self._cache.close()

    # -- adding and removing --------------------------------------------------------------------------------------

    def add(
        self, name: str, folder: str | Path, *, segments: list[str] | None = None, persist: bool = False
    ) -> None:
        """Add an adapter at runtime (no restart) and route `segments` (default: ``[name]``) to it.

        The adapter must share the bank's base (same weights hash), method, task, labels and max_length. With
        ``persist`` the folder is copied into the bank and ``bank.json`` rewritten, so the next open has it too.
        """
        folder = Path(folder)
        if not is_adapter_name(name):
            raise PeftkitError(
                f"adapter name {name!r}: use letters, digits, '_', '.' or '-' (up to 64), starting with a letter or digit"
            )
        manifest = self._checked(folder)
        with self._lock:
            if name in self.adapters:
                raise PeftkitError(
                    f"bank {self.folder} already has an adapter named {name!r}; remove it first"
                )
            path = _copy_in(folder, self.folder / name) if persist else folder.resolve()
            self.adapters[name] = BankEntry(
                path=_relative(path, self.folder), train_rows=manifest.data.train_rows
            )
            self._manifests[name] = manifest
            for segment in segments or [name]:
                self.segments[segment] = name
            if persist:
                self.bank.write(self.folder)

    def remove(self, name: str, *, persist: bool = False) -> None:
        """Drop an adapter from memory and routing; its segments then follow the fallback."""
        with self._lock:
            if name not in self.adapters:
                raise PeftkitError(f"bank {self.folder} has no adapter named {name!r}")
            self._cache.drop(name)
            del self.adapters[name]
            del self._manifests[name]
            for segment in [s for s, a in self.segments.items() if a == name]:
                del self.segments[segment]
            if persist:
                self.bank.write(self.folder)

    def _folder_of(self, name: str) -> Path:
        path = Path(self.adapters[name].path)
        return path if path.is_absolute() else self.folder / path

    def _checked(self, folder: Path) -> Manifest:
        """The manifest of the adapter at `folder`, refused unless it fits the bank."""
        manifest = read_manifest(folder)
        self.bank.check_compatible(manifest, folder)
        return manifest


def _copy_in(folder: Path, dest: Path) -> Path:
    import shutil

    if dest.exists():
        raise PeftkitError(f"{dest} already exists; choose another adapter name")
    with atomic_folder(dest) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return dest


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def build_bank(
    folder: str | Path,
    adapters: dict[str, str | Path],
    *,
    segments: dict[str, str] | None = None,
    segment_column: str | None = None,
    fallback: Fallback = "global",
) -> Path:
    """Bundle adapters trained separately into a bank folder (copied in, checked against each other).

    Args:
        folder: the bank folder to write (must not exist).
        adapters: name -> adapter folder; name it ``global`` for the one that answers unknown segments.
        segments: segment value -> adapter name; default: each adapter answers the segment of its own name.
        segment_column: the column that names segments in prediction files, for ``peftkit predict --bank``.
        fallback: ``global`` or ``error`` for segments without an adapter.
    """
    import shutil

    folder = Path(folder)
    if folder.exists():
        raise PeftkitError(f"{folder} already exists; choose a new folder for the bank")
    if not adapters:
        raise PeftkitError("a bank needs at least one adapter")
    bad = [n for n in adapters if not is_adapter_name(n)]
    if bad:
        raise PeftkitError(
            f"adapter names {bad}: use letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    manifests = {name: read_manifest(path) for name, path in adapters.items()}
    bank = BankFile.like(
        next(iter(manifests.values())),
        segment_column=segment_column,
        fallback=fallback,
        segments=dict(segments) if segments is not None else {n: n for n in adapters if n != GLOBAL},
        adapters={},
        config=next(iter(manifests.values())).config,
    )
    for name, manifest in manifests.items():
        bank.check_compatible(manifest, Path(adapters[name]))
    unknown = sorted(set(bank.segments.values()) - set(adapters))
    if unknown:
        raise PeftkitError(
            f"segments route to {unknown}, which are not among the adapters {sorted(adapters)}"
        )
    with atomic_folder(folder) as tmp:
        for name, path in adapters.items():
            shutil.copytree(path, tmp / name)
            bank.adapters[name] = BankEntry.of(manifests[name], name)
        bank.write(tmp)
    return folder
