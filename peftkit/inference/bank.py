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

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.bank_file import BankEntry, BankFile, Fallback, is_adapter_name, read_bank_file
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.errors import PeftkitError
from peftkit.inference.predictor import Prediction, decode_predictions


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
        self._lock = threading.RLock()
        # In memory, adapters go by ids of their own ("a0", "a1"...): bank names may hold '.', which torch module
        # names cannot, and a removed adapter that peft must keep (it never deletes its last one) cannot clash with
        # a new adapter of the same name. `_loaded` maps bank name -> id, least recently used first; `_stale` holds
        # ids still in the model but no longer routed, deleted as soon as another adapter is loaded.
        self._loaded: OrderedDict[str, str] = OrderedDict()
        self._stale: list[str] = []
        self._ids = iter(range(1 << 62))
        self._active: str | None = None  # id of the active adapter

        ref = models.resolve(bank.base.name)
        if ref.sha256 != bank.base.sha256:
            raise PeftkitError(
                f"bank {folder} was built on base {bank.base.name} with sha256 {bank.base.sha256[:12]}, "
                f"but that base here has sha256 {ref.sha256[:12]}; install the matching base"
            )
        self._manifests = {}
        for name, entry in bank.adapters.items():  # every adapter is checked now, not at its first request
            path = self._path(entry)
            manifest = read_manifest(path)
            bank.check_compatible(manifest, path)
            self._manifests[name] = manifest
        self.device = device or models.default_device()
        self.quant = quant or bank.quant
        self.tokenizer = models.load_tokenizer(ref)
        self._base, _ = models.load_base(
            ref,
            bank.num_outputs,
            quant=self.quant,
            dtype=models.stored_dtype(bank.dtype, self.device),
            pooling=bank.pooling,  # None in banks from before pooling was a setting: transformers' own
            device=self.device,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.model = None  # the base with the adapters attached, once the first one is loaded

    # -- building -------------------------------------------------------------------------------------------------

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
                bank._ensure_loaded([name])
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
        return list(self._loaded)

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

    def describe(self) -> dict[str, Any]:
        """What the bank holds, as JSON: base, method, task, labels, segments, fallback, adapters with metrics."""
        with self._lock:
            loaded = set(self._loaded)
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
        from peftkit.inference.predictor import prediction_columns

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

    def resolve_all(self, segments: list[str | None]) -> list[str]:
        """`resolve` for each segment, each distinct value resolved once."""
        resolved: dict[Any, str] = {}
        for segment in segments:
            if segment not in resolved:
                resolved[segment] = self.resolve(segment)
        return [resolved[s] for s in segments]

    def logits(self, texts: list[str], adapter_names: list[str]) -> np.ndarray:
        """Head outputs (N, num_outputs), row ``i`` through adapter ``adapter_names[i]``, in input order."""
        from peftkit.inference.predictor import Predictor

        if not texts:
            return np.zeros((0, self.bank.num_outputs), dtype=np.float32)
        unknown = sorted(set(adapter_names) - set(self.adapters))
        if unknown:
            raise UnknownSegmentError(f"no adapter named {', '.join(unknown)} in bank {self.folder}")
        out = np.zeros((len(texts), self.bank.num_outputs), dtype=np.float32)
        wanted = list(dict.fromkeys(adapter_names))
        with self._lock:
            # More distinct adapters than may be loaded at once: answer them max_loaded at a time.
            for start in range(0, len(wanted), self.max_loaded):
                chunk = set(wanted[start : start + self.max_loaded])
                self._ensure_loaded(list(chunk))
                predictor = Predictor(
                    self.model,
                    self.tokenizer,
                    task=self.bank.task,
                    labels=self.labels,
                    max_length=self.bank.max_length,
                    adapter="",
                    batch_size=self.batch_size,
                )
                rows = [i for i, name in enumerate(adapter_names) if name in chunk]
                if self.spec.mixed_batch:  # one pass for every adapter (peft LoRA's per-row adapter_names)
                    ids = [self._loaded[adapter_names[i]] for i in rows]
                    out[rows] = predictor.logits([texts[i] for i in rows], ids)
                    continue
                for name in wanted[
                    start : start + self.max_loaded
                ]:  # one pass per adapter, rows put back in place
                    group = [i for i in rows if adapter_names[i] == name]
                    self.activate(name)
                    out[group] = predictor.logits([texts[i] for i in group])
        return out

    def close(self) -> None:
        """Drop the model and adapters from memory; the bank answers nothing after this."""
        with self._lock:
            self.model = self._base = None
            self._loaded.clear()
            self._stale.clear()
            self._active = None
            import gc

            gc.collect()

    # -- loading, switching, adding -------------------------------------------------------------------------------

    def activate(self, name: str) -> None:
        """Make adapter `name` the active one, loading it first if needed (what the switch benchmark times)."""
        with self._lock:
            self._ensure_loaded([name])
            self._set_active(self._loaded[name])

    def _set_active(self, adapter_id: str) -> None:
        if self._active != adapter_id:
            self.spec.set_adapter(self.model, adapter_id)
            self._active = adapter_id

    def _ensure_loaded(self, names: list[str]) -> None:
        """Load the adapters in `names` that are not in memory, evicting least recently used others beyond the cap."""
        with self._lock:
            if self._base is None:
                raise PeftkitError(f"bank {self.folder} is closed; open it again")
            for name in names:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    continue
                path, adapter_id = self._path(self.adapters[name]), f"a{next(self._ids)}"
                if self.model is None:
                    self.model = self.spec.attach(self._base, path, adapter_id)
                    self.model.eval()
                    self._active = adapter_id
                else:
                    self.spec.load_adapter(self.model, path, adapter_id)
                self._loaded[name] = adapter_id
            while self._stale:
                self._delete(self._stale.pop())
            keep = set(names)
            for old in [n for n in self._loaded if n not in keep][
                : max(0, len(self._loaded) - self.max_loaded)
            ]:
                self._delete(self._loaded.pop(old))

    def _delete(self, adapter_id: str) -> None:
        if adapter_id == self._active:
            self._set_active(next(iter(self._loaded.values())))
        self.spec.delete_adapter(self.model, adapter_id)

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
        manifest = read_manifest(folder)
        self.bank.check_compatible(manifest, folder)
        with self._lock:
            if name in self.adapters:
                raise PeftkitError(
                    f"bank {self.folder} already has an adapter named {name!r}; remove it first"
                )
            path = folder.resolve()
            if persist:
                path = self._copy_in(name, folder)
            self.adapters[name] = BankEntry(
                path=_relative(path, self.folder), train_rows=manifest.data.train_rows
            )
            self._manifests[name] = manifest
            for segment in segments or [name]:
                self.segments[segment] = name
            if persist:
                self._write_bank_file()

    def remove(self, name: str, *, persist: bool = False) -> None:
        """Drop an adapter from memory and routing; its segments then follow the fallback."""
        with self._lock:
            if name not in self.adapters:
                raise PeftkitError(f"bank {self.folder} has no adapter named {name!r}")
            if name in self._loaded:
                adapter_id = self._loaded.pop(name)
                if self._loaded:
                    self._delete(adapter_id)
                else:  # the last one in memory: peft cannot delete it, so it waits for the next load
                    self._stale.append(adapter_id)
            del self.adapters[name]
            del self._manifests[name]
            for segment in [s for s, a in self.segments.items() if a == name]:
                del self.segments[segment]
            if persist:
                self._write_bank_file()

    def _path(self, entry: BankEntry) -> Path:
        path = Path(entry.path)
        return path if path.is_absolute() else self.folder / path

    def _copy_in(self, name: str, folder: Path) -> Path:
        import shutil

        from peftkit.artifacts.io import atomic_folder

        dest = self.folder / name
        if dest.exists():
            raise PeftkitError(f"{dest} already exists; choose another adapter name")
        with atomic_folder(dest) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        return dest

    def _write_bank_file(self) -> None:
        self.bank.write(self.folder)


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

    from peftkit.artifacts.io import atomic_folder

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
