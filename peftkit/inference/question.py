"""One question of a bank (purchase intent, churn...): its adapters over the bank's shared base, one per segment.

A question is what a one-question bank folder holds (``bank.json`` format 1: task, labels, method, segments,
fallback, adapters; written by ``peftkit train --segment-column`` or `build_bank`). `AdapterBank` opens one question
per folder over one base in memory. Within a question:

- adapters load lazily and stay in memory (at most ``max_loaded``, least recently used evicted first);
- a batch whose rows belong to different segments runs in one forward pass where the method allows it (LoRA:
  peft's per-row ``adapter_names``), otherwise one pass per adapter, and comes back in input order either way;
- a record's text is built by the template (or text column) of the adapter that answers it, as that adapter's
  training built it;
- a segment with no adapter of its own follows the fallback: ``global`` answers it with the global adapter,
  ``error`` refuses it. There is no fallback to the bare base: the head is trained with the adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.bank_file import BankEntry, BankFile, is_adapter_name
from peftkit.artifacts.io import atomic_folder
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.data.files import RowError, texts_or_errors
from peftkit.data.privacy import adapter_masks, mask_text
from peftkit.errors import PeftkitError
from peftkit.inference.adapter_cache import AdapterCache
from peftkit.inference.predictor import Prediction, batched_logits, decode_predictions


class UnknownSegmentError(PeftkitError, KeyError):
    """A segment the bank has no adapter for, and no fallback to answer it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Question:
    """One question's adapters over a model of the shared base. Thread-safe; built by `AdapterBank`.

    ``segments`` maps segment value -> adapter name; ``adapters`` maps adapter name -> its entry in the question's
    bank file; ``loaded`` lists the adapters in memory, least recently used first.
    """

    def __init__(
        self,
        name: str,
        folder: Path,
        bank: BankFile,
        *,
        model,
        tokenizer,
        max_loaded: int,
        batch_size: int,
    ):
        from peftkit.methods import METHODS
        from peftkit.tasks import TASKS

        if max_loaded < 1:
            raise PeftkitError(f"max_loaded must be at least 1, got {max_loaded}")
        self.name, self.folder, self.bank = name, folder, bank
        if bank.method not in METHODS:
            raise PeftkitError(f"bank {folder} uses method {bank.method!r}, unknown to this peftkit")
        self.spec = METHODS[bank.method]
        if self.spec.full_model:
            raise PeftkitError(
                f"bank {folder}: method {bank.method} saves whole models; a bank needs adapters"
            )
        self.task = TASKS[bank.task]
        self.labels: list[str] | None = bank.labels
        self.tokenizer, self.batch_size, self.max_loaded = tokenizer, batch_size, max_loaded
        # Every adapter is checked now, not at its first request. One that does not belong in the bank (another
        # base, method, task...) is refused with the bank. A damaged one (unreadable files, non-finite weights) is
        # set aside with its reason: the others still answer, and the rows routed to it get that reason as error.
        self._manifests: dict[str, Manifest] = {}
        self.broken: dict[str, str] = {}
        for n in bank.adapters:
            folder = self._folder_of(n)
            try:
                manifest = read_manifest(folder)
            except PeftkitError as exc:
                self.broken[n] = str(exc)
                continue
            self.bank.check_compatible(manifest, folder)
            try:
                _check_sound(folder, manifest)
            except PeftkitError as exc:
                self.broken[n] = str(exc)
                continue
            self._manifests[n] = manifest
        if self.broken and not self._manifests:
            raise PeftkitError(
                f"bank {folder}: every adapter is damaged; the first: {next(iter(self.broken.values()))}"
            )
        self._cache = AdapterCache(
            self.spec, model, max_loaded=max_loaded, folder_of=self._folder_of, owner=f"bank {folder}"
        )
        self.lock = self._cache.lock

    # -- what the question holds ----------------------------------------------------------------------------------

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
    def segment_column(self) -> str | None:
        return self.bank.segment_column

    @property
    def decisions(self) -> dict:
        """Adapter name -> its `peftkit.tasks.Decision` (each segment's own temperature and threshold)."""
        return {n: m.decision for n, m in self._manifests.items()}

    @property
    def loaded(self) -> list[str]:
        return self._cache.loaded

    @property
    def model(self):
        """The question's model with its loaded adapters attached; None until the first one is loaded."""
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
        """What the question holds, as JSON: method, task, labels, segments, fallback, adapters with metrics."""
        with self.lock:
            loaded = set(self._cache.loaded)
        return {
            "method": self.bank.method,
            "task": self.bank.task,
            "labels": self.labels,
            "fallback": self.fallback,
            "segment_column": self.segment_column,
            "segments": dict(self.segments),
            "adapters": {
                name: {
                    "path": entry.path,
                    "loaded": name in loaded,
                    "metrics": self._manifests[name].metrics,
                    "train_rows": self._manifests[name].data.train_rows,
                }
                if name not in self.broken
                else {"path": entry.path, "loaded": False, "damaged": self.broken[name]}
                for name, entry in self.adapters.items()
            },
            "segment_evaluation": self.bank.segment_evaluation or {},
        }

    # -- texts from records ---------------------------------------------------------------------------------------

    def texts(self, records: list[dict[str, Any]], adapters: list[str]) -> tuple[list, list[RowError | None]]:
        """Each record's text as the adapter that answers it was trained to read it (its template or text
        column); ``(texts, errors)`` with one of the two set per record."""
        texts: list[str | None] = [None] * len(records)
        errors: list[RowError | None] = [None] * len(records)
        for name in dict.fromkeys(adapters):
            rows = [i for i, a in enumerate(adapters) if a == name]
            if name in self.broken:
                for i in rows:
                    errors[i] = RowError(
                        f"adapter {name!r} is damaged: {self.broken[name]}", "repair or remove it"
                    )
                continue
            data = self._manifests[name].config.get("data", {})
            got, bad = texts_or_errors(
                [records[i] for i in rows],
                text_column=data.get("text_column", "text"),
                template=data.get("template"),
            )
            for i, text, error in zip(rows, got, bad):
                texts[i], errors[i] = text, error
        return texts, errors

    # -- answering ------------------------------------------------------------------------------------------------

    def logits(self, texts: list[str], adapter_names: list[str]) -> np.ndarray:
        """Head outputs (N, num_outputs), row ``i`` through adapter ``adapter_names[i]``, in input order."""
        out = np.zeros((len(texts), self.bank.num_outputs), dtype=np.float32)
        if not texts:
            return out
        unknown = sorted(set(adapter_names) - set(self.adapters))
        if unknown:
            raise UnknownSegmentError(f"no adapter named {', '.join(unknown)} in bank {self.folder}")
        damaged = [n for n in dict.fromkeys(adapter_names) if n in self.broken]
        if damaged:
            raise PeftkitError(
                f"adapter {damaged[0]!r} of bank {self.folder} is damaged: {self.broken[damaged[0]]}"
            )
        # Personal data masked as each adapter's training masked it (`peftkit.data.privacy`), whoever built the text.
        masks = {n: adapter_masks(self._manifests[n].config) for n in dict.fromkeys(adapter_names)}
        texts = [mask_text(t) if masks[a] else t for t, a in zip(texts, adapter_names)]
        with self.lock:
            return self._logits_by_adapter(texts, adapter_names, out)

    def _logits_by_adapter(self, texts: list[str], adapter_names: list[str], out: np.ndarray) -> np.ndarray:
        # More distinct adapters than may be loaded at once: answer them max_loaded at a time.
        wanted = list(dict.fromkeys(adapter_names))
        cache = self._cache
        for start in range(0, len(wanted), cache.max_loaded):
            chunk = wanted[start : start + cache.max_loaded]
            cache.ensure(chunk)
            members = set(chunk)
            rows = [i for i, name in enumerate(adapter_names) if name in members]
            if self.spec.mixed_batch:  # one pass for every adapter
                ids = [cache.adapter_id(adapter_names[i]) for i in rows]
                out[rows] = self._forward([texts[i] for i in rows], ids)
                continue
            for name in chunk:  # one pass per adapter, rows put back in place
                group = [i for i in rows if adapter_names[i] == name]
                cache.activate(name)
                out[group] = self._forward([texts[i] for i in group])
        return out

    def _forward(self, texts: list[str], ids: list[str] | None = None) -> np.ndarray:
        return batched_logits(
            self._cache.model,
            self.tokenizer,
            texts,
            max_length=self.bank.max_length,
            batch_size=self.batch_size,
            adapter_names=ids,
        )

    def predict(self, texts: list[str], adapters: list[str]) -> list[Prediction]:
        """One `Prediction` per text through the named adapters; any failure raises."""
        return decode_predictions(
            self.task, self.labels, self.logits(texts, adapters), adapters, self.decisions
        )

    def answer(self, texts: list[str], adapters: list[str]) -> list[Prediction | str]:
        """Like `predict`, but a row that cannot be answered gets its own error message instead of failing the rest:
        when the whole pass fails, each adapter's rows are tried apart, then each row alone. A row whose head output
        is not finite (damaged weights) is an error too, never a label."""
        try:
            logits = self.logits(texts, adapters)
        except Exception as exc:  # noqa: BLE001 - isolated below: whatever broke, it must break only its own rows
            if len(texts) == 1:
                return [_reason(exc)]
            groups = list(dict.fromkeys(adapters))
            parts = (
                [[i for i, a in enumerate(adapters) if a == g] for g in groups] if len(groups) > 1 else None
            )
            parts = parts or [[i] for i in range(len(texts))]
            out: list[Prediction | str] = [""] * len(texts)
            for rows in parts:
                for i, answer in zip(
                    rows, self.answer([texts[i] for i in rows], [adapters[i] for i in rows])
                ):
                    out[i] = answer
            return out
        finite = np.isfinite(logits).all(axis=1)
        decoded = decode_predictions(
            self.task, self.labels, np.where(finite[:, None], logits, 0.0), adapters, self.decisions
        )
        return [
            p if ok else f"adapter {p.adapter!r} gave a non-finite output (damaged weights?)"
            for p, ok in zip(decoded, finite)
        ]

    def activate(self, name: str) -> None:
        """Make adapter `name` the active one, loading it first if needed (what the switch benchmark times)."""
        self._cache.activate(name)

    def preload(self) -> None:
        """Load adapters now, up to ``max_loaded``, instead of on first use; one that fails to load is set aside as
        damaged."""
        for name in [n for n in self.adapters if n not in self.broken][: self.max_loaded]:
            try:
                self._cache.ensure([name])
            except PeftkitError as exc:
                self.broken[name] = str(exc)

    def close(self) -> None:
        self._cache.close()

    # -- adding and removing --------------------------------------------------------------------------------------

    def add(
        self, name: str, folder: str | Path, *, segments: list[str] | None = None, persist: bool = False
    ) -> None:
        """Add an adapter at runtime (no restart) and route `segments` (default: ``[name]``) to it; see
        `AdapterBank.add`."""
        folder = Path(folder)
        if not is_adapter_name(name):
            raise PeftkitError(
                f"adapter name {name!r}: use letters, digits, '_', '.' or '-' (up to 64), starting with a letter or digit"
            )
        manifest = self._checked(folder)
        with self.lock:
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
        with self.lock:
            if name not in self.adapters:
                raise PeftkitError(f"bank {self.folder} has no adapter named {name!r}")
            self._cache.drop(name)
            del self.adapters[name]
            self._manifests.pop(name, None)
            for segment in [s for s, a in self.segments.items() if a == name]:
                del self.segments[segment]
            self.broken.pop(name, None)
            if persist:
                self.bank.write(self.folder)

    def _folder_of(self, name: str) -> Path:
        path = Path(self.adapters[name].path)
        return path if path.is_absolute() else self.folder / path

    def _checked(self, folder: Path) -> Manifest:
        """The manifest of the adapter at `folder`, refused unless it fits the question and its files are sound."""
        manifest = read_manifest(folder)
        self.bank.check_compatible(manifest, folder)
        _check_sound(folder, manifest)
        return manifest


def _check_sound(folder: Path, manifest: Manifest) -> None:
    """Refuse an adapter whose task this peftkit cannot decode or whose files are damaged (`check_adapter_files`)."""
    from peftkit.artifacts.adapter_check import check_adapter_files
    from peftkit.inference.predictor import check_task

    check_task(manifest, folder)
    check_adapter_files(folder, manifest)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PeftkitError):
        return str(exc)
    text = " ".join(str(exc).split())[:200]
    return f"could not answer this row: {type(exc).__name__}: {text}"


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
