"""The adapters of a bank in memory: one base model, at most ``max_loaded`` adapters attached, least recently used
evicted first, through the method's ``attach`` / ``load_adapter`` / ``set_adapter`` / ``delete_adapter`` hooks.

In memory, adapters go by ids of their own ("a0", "a1"...): bank names may hold '.', which torch module names
cannot, and a removed adapter that peft must keep (it never deletes its last one) cannot clash with a new adapter of
the same name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError


class AdapterCache:
    """A base model with up to ``max_loaded`` adapters attached, by bank name. ``lock`` guards every change.

    ``folder_of`` gives an adapter's folder by its bank name; ``owner`` names the bank in errors.
    """

    def __init__(
        self, spec: Any, base: Any, *, max_loaded: int, folder_of: Callable[[str], Path], owner: str
    ):
        self.spec, self.max_loaded, self.folder_of, self.owner = spec, max_loaded, folder_of, owner
        self.lock = threading.RLock()
        self.model = None  # the base with the adapters attached, once the first one is loaded
        self._base = base
        self._loaded: OrderedDict[str, str] = OrderedDict()  # bank name -> id, least recently used first
        self._stale: list[str] = []  # ids still in the model but no longer routed; deleted at the next load
        self._ids = iter(range(1 << 62))
        self._active: str | None = None  # id of the active adapter

    @property
    def loaded(self) -> list[str]:
        """Bank names of the adapters in memory, least recently used first."""
        return list(self._loaded)

    def adapter_id(self, name: str) -> str:
        """The in-memory id of loaded adapter `name`."""
        return self._loaded[name]

    def ensure(self, names: list[str]) -> None:
        """Load the adapters in `names` that are not in memory, evicting least recently used others beyond the cap."""
        with self.lock:
            if self._base is None:
                raise PeftkitError(f"{self.owner} is closed; open it again")
            for name in names:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    continue
                self._loaded[name] = self._load(self.folder_of(name))
            while self._stale:
                self._delete(self._stale.pop())
            others = [n for n in self._loaded if n not in names]
            for old in others[: max(0, len(self._loaded) - self.max_loaded)]:
                self._delete(self._loaded.pop(old))

    def activate(self, name: str) -> None:
        """Make adapter `name` the active one, loading it first if needed."""
        with self.lock:
            self.ensure([name])
            self._set_active(self._loaded[name])

    def drop(self, name: str) -> None:
        """Take adapter `name` out of memory, if it is there."""
        with self.lock:
            if name not in self._loaded:
                return
            adapter_id = self._loaded.pop(name)
            if self._loaded:
                self._delete(adapter_id)
            else:  # the last one in memory: peft cannot delete it, so it waits for the next load
                self._stale.append(adapter_id)

    def close(self) -> None:
        """Drop the model and adapters from memory."""
        import gc

        with self.lock:
            self.model = self._base = None
            self._loaded.clear()
            self._stale.clear()
            self._active = None
            gc.collect()

    def _load(self, path: Path) -> str:
        from peftkit.artifacts.adapter_check import loading_errors

        adapter_id = f"a{next(self._ids)}"
        with loading_errors(path, f"the base of {self.owner}"):
            if self.model is None:
                self.model = self.spec.attach(self._base, path, adapter_id)
                self.model.eval()
                self._active = adapter_id
            else:
                self.spec.load_adapter(self.model, path, adapter_id)
        return adapter_id

    def _set_active(self, adapter_id: str) -> None:
        if self._active != adapter_id:
            self.spec.set_adapter(self.model, adapter_id)
            self._active = adapter_id

    def _delete(self, adapter_id: str) -> None:
        if adapter_id == self._active:
            self._set_active(next(iter(self._loaded.values())))
        self.spec.delete_adapter(self.model, adapter_id)
