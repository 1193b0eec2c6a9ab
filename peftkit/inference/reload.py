"""A served bank follows its version pointers without a restart: promotions, rollbacks and canaries written by
``peftkit bank promote | rollback | canary`` (`peftkit.artifacts.versions`) are picked up by `Reloader`.

Two triggers, one path: a watcher thread polls each question's ``bank.json`` (its mtime, size and inode, every
``interval_s``; a rename-into-place changes the inode even within one mtime tick) and ``POST /v1/reload`` (admin key)
checks at once. Either reads the changed files and hands each to `Question.follow`, which checks the new versions
(loadable, compatible) and swaps the question's pointers in one assignment. A request routes all its rows with one
snapshot of the pointers when it is planned (`Question.pick`), and its units carry immutable version keys
(``hotel@v3``), so it is answered wholly by the versions of before or wholly by those of after; the old versions stay
in the adapter cache (or are loaded again from their immutable folders) for requests still in flight.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from peftkit.artifacts.bank_file import read_bank_file
from peftkit.artifacts.names import BANK_FILE
from peftkit.errors import PeftkitError

log = logging.getLogger("peftkit.inference.reload")


class Reloader:
    """Follows the ``bank.json`` of every question of `bank` (an `AdapterBank`); ``interval_s`` None: no watching,
    only `check` (``POST /v1/reload``)."""

    def __init__(self, bank: Any, interval_s: float | None = 1.0):
        self.bank, self.interval_s = bank, interval_s
        self.reloads = 0  # files followed since start
        self._seen = {name: _stamp(q.folder) for name, q in bank.questions.items()}
        self._lock = threading.Lock()  # the watcher and a POST /v1/reload never follow one file twice at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, *, force: bool = False) -> dict[str, list[str]]:
        """Follow every question whose ``bank.json`` changed since last seen (`force`: every question). Returns
        question -> the changes (`Question.follow`), for the questions that changed."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for name, question in self.bank.questions.items():
                stamp = _stamp(question.folder)
                if not force and stamp == self._seen.get(name):
                    continue
                try:
                    file = read_bank_file(question.folder)
                except PeftkitError as exc:  # half-written by hand, or removed: keep serving what is loaded
                    out[name] = [f"kept the loaded pointers: {exc}"]
                    continue
                self._seen[name] = stamp
                changes = question.follow(file)
                if changes:
                    self.reloads += 1
                    out[name] = changes
                    log.info("reloaded question %s: %s", name, "; ".join(changes))
        return out

    def start(self) -> None:
        if self.interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="peftkit-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except (PeftkitError, OSError) as exc:  # the next tick tries again; serving goes on meanwhile
                log.warning("reload failed: %s", exc)


def _stamp(folder: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(Path(folder) / BANK_FILE)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
