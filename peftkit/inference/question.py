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
  ``error`` refuses it. There is no fallback to the bare base: the head is trained with the adapter;
- an adapter with versions (`peftkit.artifacts.versions`) answers with the version its pointer names, loaded under
  the immutable key ``name@vN``: a request routed with one snapshot of the pointers (`Question.pick`) is answered
  wholly by those versions, whatever `Question.follow` swaps in meanwhile. Answers name it (``version``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.artifacts.bank_file import BankEntry, BankFile, is_adapter_name
from peftkit.artifacts.io import atomic_folder
from peftkit.artifacts.manifest import Manifest, read_manifest
from peftkit.artifacts.names import GLOBAL
from peftkit.artifacts.versions import in_canary, parse_key, version_folder, version_key
from peftkit.data.files import RowError, texts_or_errors
from peftkit.data.privacy import adapter_masks, mask_text
from peftkit.data.template import is_missing
from peftkit.errors import PeftkitError
from peftkit.inference.adapter_cache import AdapterCache
from peftkit.inference.predictor import Prediction, batched_logits, decode_predictions


class UnknownSegmentError(PeftkitError, KeyError):
    """A segment the bank has no adapter for, and no fallback to answer it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Pointer:
    """Which version of one adapter answers: ``key`` (production), and a canary taking ``share`` of the records by
    their ``key_column`` value."""

    key: str
    canary: str | None = None
    share: float = 0.0
    key_column: str | None = None

    @classmethod
    def of(cls, name: str, entry: BankEntry) -> Pointer:
        if entry.canary is None:
            return cls(version_key(name, entry.version))
        c = entry.canary
        return cls(version_key(name, entry.version), version_key(name, c.version), c.share, c.key_column)


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
        # Keyed by version key (``hotel@v3``; ``hotel`` unversioned), with each adapter's name as an alias of its
        # production version.
        self._manifests: dict[str, Manifest] = {}
        self.broken: dict[str, str] = {}
        # replaced whole, never changed: a request's snapshot stays as it was read
        self._pointers = {n: Pointer.of(n, e) for n, e in bank.adapters.items()}
        for n, pointer in self._pointers.items():
            for key in filter(None, (pointer.key, pointer.canary)):
                self._know(key, refuse=True)
            self._alias(n, pointer.key)
        if self.broken and not self._manifests:
            raise PeftkitError(
                f"bank {folder}: every adapter is damaged; the first: {next(iter(self.broken.values()))}"
            )
        self._cache = AdapterCache(
            self.spec, model, max_loaded=max_loaded, folder_of=self._folder_of, owner=f"bank {self.folder}"
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
                    "loaded": self._key(name) in loaded,
                    "metrics": self._manifests[name].metrics,
                    "train_rows": self._manifests[name].data.train_rows,
                    **_versions_json(entry),
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
        column); ``(texts, errors)`` with one of the two set per record. `adapters`: names or version keys."""
        adapters = self.pick(adapters)
        texts: list[str | None] = [None] * len(records)
        errors: list[RowError | None] = [None] * len(records)
        for name in dict.fromkeys(adapters):
            rows = [i for i, a in enumerate(adapters) if a == name]
            if parse_key(name)[0] in self.adapters:
                self._know(name)
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
        unknown = sorted({k for k in adapter_names if parse_key(k)[0] not in self.adapters})
        if unknown:
            raise UnknownSegmentError(f"no adapter named {', '.join(unknown)} in bank {self.folder}")
        adapter_names = self.pick(adapter_names)
        for key in dict.fromkeys(adapter_names):
            self._know(key)
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
        """One `Prediction` per text through the named adapters (names: their production versions, or version keys
        ``name@vN``); any failure raises."""
        adapters = self.pick(adapters)
        return _named(
            decode_predictions(self.task, self.labels, self.logits(texts, adapters), adapters, self.decisions)
        )

    def answer(self, texts: list[str], adapters: list[str]) -> list[Prediction | str]:
        """Like `predict`, but a row that cannot be answered gets its own error message instead of failing the rest:
        when the whole pass fails, each adapter's rows are tried apart, then each row alone. A row whose head output
        is not finite (damaged weights) is an error too, never a label."""
        adapters = self.pick(adapters)
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
        decoded = _named(
            decode_predictions(
                self.task, self.labels, np.where(finite[:, None], logits, 0.0), adapters, self.decisions
            )
        )
        return [
            p if ok else f"adapter {p.adapter!r} gave a non-finite output (damaged weights?)"
            for p, ok in zip(decoded, finite)
        ]

    def activate(self, name: str) -> None:
        """Make adapter `name` the active one, loading it first if needed (what the switch benchmark times)."""
        self._cache.activate(self._key(name))

    def preload(self) -> None:
        """Load adapters now, up to ``max_loaded``, instead of on first use; one that fails to load is set aside as
        damaged."""
        for name in [n for n in self.adapters if n not in self.broken][: self.max_loaded]:
            try:
                self._cache.ensure([self._key(name)])
            except PeftkitError as exc:
                self.broken[name] = self.broken[self._key(name)] = str(exc)

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
            self._pointers = {**self._pointers, name: Pointer(name)}
            for segment in segments or [name]:
                self.segments[segment] = name
            if persist:
                self.bank.write(self.folder)

    def remove(self, name: str, *, persist: bool = False) -> None:
        """Drop an adapter from memory and routing; its segments then follow the fallback."""
        with self.lock:
            if name not in self.adapters:
                raise PeftkitError(f"bank {self.folder} has no adapter named {name!r}")
            for key in [k for k in self._cache.loaded if parse_key(k)[0] == name]:
                self._cache.drop(key)
            self._pointers = {n: p for n, p in self._pointers.items() if n != name}
            del self.adapters[name]
            self._manifests.pop(name, None)
            for segment in [s for s, a in self.segments.items() if a == name]:
                del self.segments[segment]
            self.broken.pop(name, None)
            if persist:
                self.bank.write(self.folder)

    # -- versions -------------------------------------------------------------------------------------------------

    def pick(self, adapters: list[str], records: list[dict[str, Any]] | None = None) -> list[str]:
        """The version key answering each row, from one snapshot of the pointers (so one call never mixes a
        promotion's before and after): each adapter name's production version, or its canary where the row's
        record has the canary's key in its share. Version keys pass through; unknown names too (refused later)."""
        pointers = self._pointers  # one read: `follow` replaces the dict, never changes it
        out = []
        for i, name in enumerate(adapters):
            p = pointers.get(name)
            if p is None:
                out.append(name)
                continue
            key = p.key
            if p.canary is not None and records is not None:
                value = records[i].get(p.key_column)
                if not is_missing(value) and in_canary(value, p.share):
                    key = p.canary
            out.append(key)
        return out

    def follow(self, file: BankFile) -> list[str]:
        """Take the version pointers (production, canary) of `file`, a fresh read of this question's ``bank.json``:
        what a promote, rollback or canary wrote. Requests planned before keep their versions, later ones get the
        new. A new version that is damaged or does not fit is refused and its adapter keeps its pointer. Adapters
        and segments added to or removed from the file are not followed (restart for those). Returns what changed,
        one line each."""
        new, changes = dict(self._pointers), []
        for name, entry in file.adapters.items():
            if name not in new or Pointer.of(name, entry) == new[name]:
                continue
            pointer = Pointer.of(name, entry)
            bad = [k for k in filter(None, (pointer.key, pointer.canary)) if not self._know(k)]
            if bad:
                changes.append(f"{name}: kept {new[name].key}; {bad[0]} is damaged: {self.broken[bad[0]]}")
                continue
            canary = f" (canary {pointer.canary})" if pointer.canary else ""
            changes.append(f"{name}: {new[name].key} -> {pointer.key}{canary}")
            new[name] = pointer
            self.bank.adapters[name] = entry
            self._alias(name, pointer.key)
        self._pointers = new  # one assignment: the swap
        return changes

    @property
    def pointers(self) -> dict[str, Pointer]:
        """Adapter name -> which version answers it now (a snapshot: never changed, only replaced)."""
        return self._pointers

    def _key(self, name: str) -> str:
        pointer = self._pointers.get(name)
        return name if pointer is None else pointer.key

    def _know(self, key: str, *, refuse: bool = False) -> bool:
        """Read and check the manifest of version `key` once; a damaged one is set aside in ``broken``, one that
        does not fit the question raises (`refuse`) or is set aside. True when it can answer."""
        if key in self._manifests or key in self.broken:
            return key in self._manifests
        folder = self._folder_of(key)
        try:
            manifest = read_manifest(folder)
        except PeftkitError as exc:
            self.broken[key] = str(exc)
            return False
        try:
            self.bank.check_compatible(manifest, folder)
        except PeftkitError as exc:
            if refuse:
                raise
            self.broken[key] = str(exc)
            return False
        try:
            _check_sound(folder, manifest)
        except PeftkitError as exc:
            self.broken[key] = str(exc)
            return False
        self._manifests[key] = manifest
        return True

    def _alias(self, name: str, key: str) -> None:
        """Adapter `name` stands for version `key` where callers look adapters up by name (explanations, describe)."""
        if key == name:
            return
        if key in self._manifests:
            self._manifests[name] = self._manifests[key]
            self.broken.pop(name, None)
        elif key in self.broken:
            self.broken[name] = self.broken[key]

    def _folder_of(self, key: str) -> Path:
        name, version = parse_key(key)
        if version is not None:
            return version_folder(self.folder, name, version)
        path = Path(self.adapters[name].path)
        return path if path.is_absolute() else self.folder / path

    def _checked(self, folder: Path) -> Manifest:
        """The manifest of the adapter at `folder`, refused unless it fits the question and its files are sound."""
        manifest = read_manifest(folder)
        self.bank.check_compatible(manifest, folder)
        _check_sound(folder, manifest)
        return manifest


def _named(predictions: list[Prediction]) -> list[Prediction]:
    """Predictions named by adapter, with the version key (``hotel@v3``) in ``version`` for a versioned adapter."""
    out = []
    for p in predictions:
        name, version = parse_key(p.adapter)
        out.append(p if version is None else replace(p, adapter=name, version=p.adapter))
    return out


def _versions_json(entry: BankEntry) -> dict[str, Any]:
    if entry.version is None:
        return {}
    canary = {"canary": entry.canary.to_json()} if entry.canary is not None else {}
    return {"version": entry.version, **canary}


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
