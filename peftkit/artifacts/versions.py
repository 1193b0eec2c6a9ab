"""Adapter versions of one question: immutable version folders, a production pointer per adapter (and optionally a
canary), moved by promote / rollback / canary, every move recorded in ``history.jsonl``.

Inside a one-question bank folder::

    intent/
      bank.json              adapters.hotel = {"path": "versions/hotel/v3", "version": 3,
                                               "canary": {"version": 4, "share": 0.1, "key_column": "user_id"}}
      versions/hotel/v1/     complete adapter folders, written whole (temp + rename), never changed after
      versions/hotel/v3/ ...
      history.jsonl          one JSON object a line: every add, promote, rollback, canary and retire
      hotel/                 a bank from before versions: this folder is hotel's version 1

A bank written before versions (no ``version`` in its entries) opens and answers as it always did; its folder counts
as version 1. Nothing moves on open: the first `add_version` of an adapter copies its folder to
``versions/<adapter>/v1`` (the pointer then names the copy, same weights), and `prune` later removes the old folder.

Kill safety. Every move runs under the question's writer lock (`io.output_lock` on ``bank.json``) and goes:

1. append the history line with ``"status": "pending"``;
2. write ``bank.json`` by temp + rename (`io.write_text_atomic`): the one atomic step, the pointer move itself;
3. append ``{"id": ..., "status": "done"}``.

A ``kill -9`` before 2 leaves the old ``bank.json`` (the bank answers as before), after it the new one (as after);
never a mix, since readers only ever see a whole file. A pending line without its ``done`` is reconciled against
``bank.json``: it counts when the pointer it names is in place (the kill came after 2) and is dropped otherwise.
`history` does that on read; the next move under the lock writes the verdict down. Re-running a killed command is
safe: a promote to the version already in production does nothing, a rollback re-reads the history as reconciled.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from peftkit.artifacts.bank_file import (
    DEFAULT_QUESTION,
    BankEntry,
    BankFile,
    CanaryEntry,
    read_bank_file,
    read_bank_index,
)
from peftkit.artifacts.io import atomic_folder, output_lock
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import BANK_FILE
from peftkit.errors import PeftkitError

VERSIONS = "versions"  # versions/<adapter>/v<N>/ inside a question's folder
HISTORY = "history.jsonl"
ACTIONS = ("add", "promote", "rollback", "canary", "retire")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")


def _no_step(step: str) -> None:
    """Called at each named step of a move; tests replace it to kill the process there."""


STEP = _no_step  # steps: "pending" (history line written), "copied" (add: folder in place), "written" (bank.json)


# -- names ----------------------------------------------------------------------------------------------------------


def version_key(adapter: str, version: int | None) -> str:
    """The immutable id of one version in memory and in answers: ``hotel@v3`` (``hotel`` for an unversioned one)."""
    return adapter if version is None else f"{adapter}@v{version}"


def parse_key(key: str) -> tuple[str, int | None]:
    """``hotel@v3`` -> ``("hotel", 3)``; ``hotel`` -> ``("hotel", None)``. Adapter names never hold '@'."""
    name, sep, version = key.rpartition("@v")
    if sep and version.isdigit():
        return name, int(version)
    return key, None


def version_folder(question: Path, adapter: str, version: int) -> Path:
    return Path(question) / VERSIONS / adapter / f"v{version}"


def in_canary(value: Any, share: float) -> bool:
    """Whether a record whose key is `value` falls in a canary of `share`: sha256 of the key's text to [0, 1), the
    same answer in every process and run (Python's ``hash`` is salted per process). 7, "7" and 7.0 are one key."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    digest = hashlib.sha256(str(value).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def question_folder(bank: str | Path, question: str | None = None) -> Path:
    """The folder of `question` in the bank at `bank` (a one-question bank: the folder itself).

    Raises:
        PeftkitError: an unknown question, or none named where the bank has several; naming the questions.
    """
    bank = Path(bank)
    index, single = read_bank_index(bank)
    if single:
        if question not in (None, DEFAULT_QUESTION):
            raise PeftkitError(f"--question {question}: {bank} is a one-question bank; leave --question out")
        return bank
    if question is None:
        if len(index.questions) == 1:
            return bank / next(iter(index.questions.values())).path
        raise PeftkitError(f"{bank} holds questions {', '.join(index.questions)}; name one with --question")
    if question not in index.questions:
        raise PeftkitError(
            f"--question {question}: {bank} has no such question; its questions: {', '.join(index.questions)}"
        )
    return bank / index.questions[question].path


# -- reading --------------------------------------------------------------------------------------------------------


def production(question: Path, adapter: str) -> int:
    """The version of `adapter` in production (1 for an adapter of a bank from before versions)."""
    return _entry(read_bank_file(question), adapter, question).version or 1


def versions(question: Path, adapter: str) -> list[int]:
    """The versions of `adapter` on disk, oldest first (an unversioned adapter's own folder is version 1)."""
    entry = _entry(read_bank_file(question), adapter, question)
    return _versions(Path(question), adapter, entry)


def _versions(question: Path, adapter: str, entry: BankEntry) -> list[int]:
    found = set() if entry.version is not None else {1}
    root = question / VERSIONS / adapter
    if root.is_dir():
        for child in root.iterdir():
            match = _VERSION_DIR.match(child.name)
            if match and child.is_dir():
                found.add(int(match.group(1)))
    return sorted(found)


def history(question: Path) -> list[dict]:
    """Every move of the question's pointers, oldest first: time (UTC), user, action, adapter, from, to, reason,
    report. A move cut short by a kill is in it when its pointer is in place, else left out (see the module doc)."""
    question = Path(question)
    return _effective(_read_lines(question), read_bank_file(question), question)


def _read_lines(question: Path) -> list[dict]:
    path = question / HISTORY
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-append: that move never reached bank.json
            continue
        if isinstance(record, dict) and "id" in record:
            lines.append(record)
    return lines


def _effective(lines: list[dict], bank: BankFile, question: Path) -> list[dict]:
    verdicts = {r["id"]: r["status"] for r in lines if r.get("status") in ("done", "aborted")}
    out = []
    for record in lines:
        if record.get("status") != "pending":
            continue
        verdict = verdicts.get(record["id"]) or ("done" if _applied(record, bank, question) else "aborted")
        if verdict == "done":
            out.append({k: v for k, v in record.items() if k not in ("id", "status")})
    return out


def _applied(record: dict, bank: BankFile, question: Path) -> bool:
    """Whether the pending move `record` took effect: its pointer (or folder) is as it says."""
    entry = bank.adapters.get(record["adapter"])
    action, to = record["action"], record["to"]
    if action in ("promote", "rollback"):
        return entry is not None and (entry.version or 1) == to
    if action == "canary":
        return entry is not None and (entry.canary.version if entry.canary else None) == to
    if action == "add":
        return version_folder(question, record["adapter"], to).is_dir()
    if action == "retire":
        return not version_folder(question, record["adapter"], record["from"]).is_dir()
    return False


def _rollback_stack(records: list[dict], adapter: str) -> list[int]:
    """The versions rollbacks of `adapter` go back to, the next one last: each promote pushes the version it
    replaced, each rollback pops one."""
    stack: list[int] = []
    for record in records:
        if record["adapter"] != adapter:
            continue
        if record["action"] == "promote" and record["from"] is not None:
            stack.append(record["from"])
        elif record["action"] == "rollback" and stack:
            stack.pop()
    return stack


# -- moving ---------------------------------------------------------------------------------------------------------


def add_version(
    question_folder: Path, adapter: str, source: Path, *, reason: str = "", report: dict | None = None
) -> int:
    """Copy the adapter folder `source` in as `adapter`'s next version, checked compatible with the question; it is
    not promoted. Returns its number.

    Raises:
        PeftkitError: an adapter the question does not have, or a `source` that cannot join it.
    """
    question, source = Path(question_folder), Path(source)
    with _moving(question) as (bank, records):
        entry = _entry(bank, adapter, question)
        bank.check_compatible(read_manifest(source), source)
        moves: list[tuple[dict, Path]] = []
        if entry.version is None and not version_folder(question, adapter, 1).is_dir():
            # a bank from before versions: its folder becomes v1 (copied; the original stays until `prune`)
            moves.append(
                (_record("add", adapter, None, 1, "the folder from before versions"), question / entry.path)
            )
        number = max([*_versions(question, adapter, entry), 1]) + 1
        moves.append((_record("add", adapter, None, number, reason, report), source))
        for record, _ in moves:
            _append(question, record)
        STEP("pending")
        for record, folder in moves:
            dest = version_folder(question, adapter, record["to"])
            if not dest.is_dir():  # a killed earlier run's v1 copy is whole (written by rename): kept
                with atomic_folder(dest) as tmp:
                    shutil.copytree(folder, tmp, dirs_exist_ok=True)
        STEP("copied")
        if entry.version is None:
            _point(entry, question, adapter, 1)
            bank.write(question)
            STEP("written")
        for record, _ in moves:
            _append(question, {"id": record["id"], "status": "done"})
    return number


def promote(
    question_folder: Path, adapter: str, version: int, *, reason: str = "", report: dict | None = None
) -> None:
    """Put `adapter`'s `version` in production: one atomic rewrite of ``bank.json``. Promoting the version already
    in production does nothing (so a killed promote can be run again); promoting the canary ends the canary."""
    question = Path(question_folder)
    with _moving(question) as (bank, _):
        entry = _entry(bank, adapter, question)
        _check_version(question, adapter, entry, version)
        current = entry.version or 1
        if current == version:
            return
        if entry.canary is not None and entry.canary.version == version:
            entry = bank.adapters[adapter] = _without_canary(entry)
        _point(entry, question, adapter, version)
        _commit(question, bank, [_record("promote", adapter, current, version, reason, report)])


def rollback(
    question_folder: Path, adapter: str | None = None, *, reason: str = ""
) -> dict[str, tuple[int, int]]:
    """Put back the version that was in production before the last promote not yet rolled back, for `adapter` (None:
    every adapter that has one), in one rewrite of ``bank.json``; a canary of that version ends. Returns adapter ->
    (from, to).

    Raises:
        PeftkitError: nothing to roll back (no promote in the history), naming the versions in production.
    """
    question = Path(question_folder)
    with _moving(question) as (bank, records):
        names = [adapter] if adapter is not None else list(bank.adapters)
        moves, done = [], {}
        for name in names:
            entry = _entry(bank, name, question)
            stack = _rollback_stack(records, name)
            if not stack:
                continue
            current, target = entry.version or 1, stack[-1]
            _check_version(question, name, entry, target)
            if entry.canary is not None and entry.canary.version == target:  # back in production: no canary
                entry = bank.adapters[name] = _without_canary(entry)
            _point(entry, question, name, target)
            moves.append(_record("rollback", name, current, target, reason))
            done[name] = (current, target)
        if not moves:
            shown = ", ".join(f"{n}@v{bank.adapters[n].version or 1}" for n in names if n in bank.adapters)
            raise PeftkitError(
                f"nothing to roll back in {question}: no promote of {adapter or 'any adapter'} in its history (in production: {shown})"
            )
        _commit(question, bank, moves)
    return done


def set_canary(
    question_folder: Path, adapter: str, version: int, *, share: float, key_column: str, reason: str = ""
) -> None:
    """Answer the share `share` of `adapter`'s records, chosen by a stable hash of their `key_column` value, with
    `version` (records without the key get production)."""
    question = Path(question_folder)
    if not 0 < share <= 1:
        raise PeftkitError(
            f"--share {share}: give a fraction above 0 and at most 1, e.g. 0.1 for 10% of the keys"
        )
    if not key_column:
        raise PeftkitError("--key-column: name the record field that keys the canary, e.g. user_id")
    with _moving(question) as (bank, _):
        entry = _entry(bank, adapter, question)
        _check_version(question, adapter, entry, version)
        if version == (entry.version or 1):
            raise PeftkitError(
                f"{adapter}@v{version} is already in production; a canary tries another version"
            )
        old = entry.canary.version if entry.canary else None
        entry.canary = CanaryEntry(version=version, share=share, key_column=key_column)
        record = _record("canary", adapter, old, version, reason)
        _commit(question, bank, [{**record, "share": share, "key_column": key_column}])


def clear_canary(question_folder: Path, adapter: str, *, reason: str = "") -> None:
    """End `adapter`'s canary: all its traffic goes to production. Without a canary this does nothing."""
    question = Path(question_folder)
    with _moving(question) as (bank, _):
        entry = _entry(bank, adapter, question)
        if entry.canary is None:
            return
        old = entry.canary.version
        bank.adapters[adapter] = _without_canary(entry)
        _commit(question, bank, [_record("canary", adapter, old, None, reason)])


def prune(question_folder: Path, keep: int) -> dict[str, list[int]]:
    """Delete old versions: per adapter all but the newest `keep`, never the production or canary version nor the
    `keep` versions the next rollbacks would go back to; also the folder of a bank from before versions once it was
    copied to ``v1``. Returns adapter -> deleted versions."""
    question = Path(question_folder)
    if keep < 1:
        raise PeftkitError(f"--keep {keep}: keep at least 1 version per adapter")
    removed: dict[str, list[int]] = {}
    with _moving(question) as (bank, records):
        for name, entry in bank.adapters.items():
            if entry.version is None:
                continue
            have = _versions(question, name, entry)
            protected = set(have[-keep:]) | {entry.version} | set(_rollback_stack(records, name)[-keep:])
            if entry.canary is not None:
                protected.add(entry.canary.version)
            for number in [v for v in have if v not in protected]:
                record = _record("retire", name, number, None, f"prune --keep {keep}")
                _append(question, record)
                _remove_folder(version_folder(question, name, number))
                _append(question, {"id": record["id"], "status": "done"})
                removed.setdefault(name, []).append(number)
            legacy = question / name
            used = {(question / e.path).resolve() for e in bank.adapters.values()}
            # a versioned entry was an unversioned one copied to v1 first: its old folder is a spare copy
            if (legacy / "peftkit.json").is_file() and legacy.resolve() not in used:
                _remove_folder(legacy)
    return removed


# -- helpers --------------------------------------------------------------------------------------------------------


@contextmanager
def _moving(question: Path) -> Iterator[tuple[BankFile, list[dict]]]:
    """Hold the question's writer lock; yield its bank file and its reconciled history (pending lines written down)."""
    with output_lock(question / BANK_FILE, flag="bank"):
        bank = read_bank_file(question)
        lines = _read_lines(question)
        verdicts = {r["id"] for r in lines if r.get("status") in ("done", "aborted")}
        for record in lines:
            if record.get("status") == "pending" and record["id"] not in verdicts:
                status = "done" if _applied(record, bank, question) else "aborted"
                _append(question, {"id": record["id"], "status": status})
        yield bank, _effective(_read_lines(question), bank, question)


def _commit(question: Path, bank: BankFile, records: list[dict]) -> None:
    for record in records:
        _append(question, record)
    STEP("pending")
    bank.write(question)  # temp + rename: the move
    STEP("written")
    for record in records:
        _append(question, {"id": record["id"], "status": "done"})


def _record(
    action: str, adapter: str, old: int | None, new: int | None, reason: str, report: dict | None = None
) -> dict:
    record = {
        "id": secrets.token_hex(8),
        "status": "pending",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "user": _user(),
        "action": action,
        "adapter": adapter,
        "from": old,
        "to": new,
        "reason": reason,
    }
    if report is not None:
        record["report"] = report
    return record


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return os.environ.get("USER", "unknown")


def _append(question: Path, record: dict) -> None:
    """One line appended with one write; a torn last line (a kill mid-write) is ended first, so it stays alone."""
    path = question / HISTORY
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry(bank: BankFile, adapter: str, question: Path) -> BankEntry:
    if adapter not in bank.adapters:
        raise PeftkitError(f"{question} has no adapter {adapter!r}; its adapters: {', '.join(bank.adapters)}")
    return bank.adapters[adapter]


def _check_version(question: Path, adapter: str, entry: BankEntry, version: int) -> None:
    have = _versions(question, adapter, entry)
    if version not in have:
        raise PeftkitError(
            f"{adapter} has no version {version} in {question}; its versions: {', '.join(f'v{v}' for v in have)}"
        )


def _point(entry: BankEntry, question: Path, adapter: str, version: int) -> None:
    """Point `entry` at `version`: its folder, number, training rows and metrics."""
    folder = version_folder(question, adapter, version)
    manifest = read_manifest(folder)
    entry.path = str(folder.relative_to(question))
    entry.version = version
    entry.train_rows, entry.metrics = manifest.data.train_rows, manifest.metrics


def _without_canary(entry: BankEntry) -> BankEntry:
    return BankEntry(**{k: v for k, v in entry.to_json().items() if k != "canary"})


def _remove_folder(folder: Path) -> None:
    """Rename aside first (one step: the version is there whole or gone), then delete."""
    aside = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)
