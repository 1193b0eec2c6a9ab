"""Reading JSON files with one-line errors, and atomic writes: a file or folder is written under a temporary name beside its target and renamed into place.

Rename is atomic on one file system, so a reader (or a kill) never sees half a file; on failure the temporary
is removed. Every writer in peftkit goes through here.

The temporary name carries its writer's pid (``.<name>.tmp-<pid>-<random>``): a run killed with ``kill -9`` cannot
remove its own, so the next write beside it removes the ones whose process is gone (never a live process's).
Temporaries are created with the modes ``open``/``mkdir`` give under the umask (``tempfile`` would make them 0600 or
0700 whatever the umask, so a service account could not read the artifacts). A write that fails for a reason the user
can fix (a full disk, a read-only file system, no permission, a file where a folder must be) becomes one
`PeftkitError` naming the path, with the temporary removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

# Failures of a write the user can fix; anything else is a bug and keeps its traceback.
_USER_ERRNOS = {
    errno.ENOSPC: "the disk is full; free space",
    errno.EDQUOT: "the disk quota is used up; free space",
    errno.EROFS: "the file system is read-only; choose a writable place",
    errno.EACCES: "permission denied; choose a folder you can write",
    errno.EPERM: "permission denied; choose a folder you can write",
    errno.ENOTDIR: "a file stands where a folder must be; choose another path",
    errno.EISDIR: "a folder stands where a file must be; choose another path",
    errno.EEXIST: "a file stands where a folder must be; choose another path",
    errno.EFBIG: "the file is too large for this file system",
}


def read_json(path: Path) -> Any:
    """The JSON in `path`, or a one-line error naming the file, line and what is wrong."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PeftkitError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def write_failure(exc: BaseException, path: Path) -> PeftkitError | None:
    """The one-line error for an `OSError` the user can fix (full disk, read-only, no permission...) while writing
    `path`; None for anything else (a bug, which keeps its traceback)."""
    if not isinstance(exc, OSError) or exc.errno not in _USER_ERRNOS:
        return None
    return PeftkitError(
        f"cannot write {path}: {exc.strerror or exc} ({_USER_ERRNOS[exc.errno]}); nothing was written"
    )


def check_writable_path(path: Path, *, folder: bool, flag: str = "--output") -> None:
    """Refuse, before any work, an output path that cannot be written: one under a file, a folder where a file
    goes (or a file where a folder goes), or in a read-only or not writable place.

    Raises:
        PeftkitError: naming `flag`, the path and what to do.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind, want = ("a file", "a folder path") if folder else ("a folder", "a file path")
        raise PeftkitError(f"{flag} {path} is {kind}; choose {want}")
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise PeftkitError(f"{flag} {path}: {ancestor} is a file, not a folder; choose another {flag}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(ancestor) else "is not writable for this user"
        raise PeftkitError(f"{flag} {path}: {ancestor} {why}; choose another {flag}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def temp_name(name: str, kind: str = "tmp") -> str:
    """``.<name>.<kind>-<pid>-<random>``: the pid says whose it is, so leftovers of dead runs can be removed."""
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries (and set-aside old copies) beside `target` left by processes that no longer run.

    Only names this module makes (``.<name>.tmp-<pid>-...`` and ``.<name>.old-<pid>``) are considered, and only
    those whose pid is dead; a live process's temporaries are never touched. Returns what was removed.
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    own = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp-(\d+)-[0-9a-f]{{8}}|old-(\d+))")
    for leftover in target.parent.iterdir():
        match = own.fullmatch(leftover.name)
        if match is None:
            continue
        pid = int(match.group(1) or match.group(2))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if match.group(2) and not target.exists():
            continue  # killed between moving the old folder aside and renaming the new one in: the only copy
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


@contextmanager
def output_lock(out: Path, *, flag: str = "--output") -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside `out` (holding this pid) while a run writes `out`; a second writer is refused.

    Two runs into one ``--output`` would both pass the up-front checks and the later would silently replace the
    earlier's result. A lock whose process is gone (a killed run) is taken over; the lock is removed on exit.

    Raises:
        PeftkitError: another live process holds the lock, or the lock cannot be created (`write_failure`).
    """
    out = Path(out)
    _make_parent(out)
    lock = out.parent / f".{out.name}.lock"
    mine = out.parent / f".{out.name}.lock-{os.getpid()}"
    for _ in range(3):  # a stale lock is removed and the creation retried; a racing taker-over wins once
        try:
            # Written whole under a name of its own, then linked in: a reader never sees a lock without its pid.
            mine.write_text(f"{os.getpid()}\n", encoding="utf-8")
            os.link(mine, lock)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and holder != os.getpid() and _pid_alive(holder):
                raise PeftkitError(
                    f"{flag} {out} is being written by another peftkit run (pid {holder}, lock {lock}); wait for "
                    f"it to finish or choose another {flag}"
                ) from None
            lock.unlink(missing_ok=True)  # its process is gone: a killed run's lock
            continue
        except OSError as exc:
            raise (write_failure(exc, lock) or exc) from None
        finally:
            mine.unlink(missing_ok=True)
        break
    else:
        raise PeftkitError(
            f"{flag} {out}: could not take the lock {lock}; remove it if no run is writing there"
        )
    try:
        yield lock
    finally:
        if _lock_holder(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def output_lock_holder(out: Path) -> int | None:
    """The pid of a live process holding `output_lock` on `out` (another run writing there now), else None."""
    out = Path(out)
    holder = _lock_holder(out.parent / f".{out.name}.lock")
    return holder if holder is not None and holder != os.getpid() and _pid_alive(holder) else None


def _lock_holder(lock: Path) -> int | None:
    """The pid in a lock file; None when it is unreadable or empty (a writer killed between create and write)."""
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (write_failure(exc, path) or exc) from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it is renamed onto `path`, on failure removed.

    Raises:
        PeftkitError: the write failed for a reason the user can fix (`write_failure`).
    """
    path = Path(path)
    _make_parent(path)
    remove_stale_temporaries(path)
    tmp = path.parent / temp_name(path.name)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # 0666 less the umask
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failure = write_failure(exc, path)
        if failure is not None:
            raise failure from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON at `path`, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def atomic_folder(out: Path, *, first_wins: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` in one rename, on failure it vanishes.

    ``first_wins``: for caches several processes may fill at once; when another process put a folder at `out`
    meanwhile, keep theirs and drop ours (renaming onto a folder that is not empty fails).

    Raises:
        PeftkitError: the write failed for a reason the user can fix (`write_failure`).
    """
    out = Path(out)
    _make_parent(out)
    remove_stale_temporaries(out)
    tmp = out.parent / temp_name(out.name)
    try:
        tmp.mkdir(mode=0o777)  # 0777 less the umask
        yield tmp
        if not first_wins:
            replace_folder(tmp, out)
            return
        try:
            os.replace(tmp, out)
        except OSError:
            if not out.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(exc, out)
        if failure is None and isinstance(exc, PeftkitError) and str(tmp) in str(exc):
            # a write inside the folder failed (write_json of its manifest): name the path the user gave
            failure = PeftkitError(str(exc).replace(str(tmp), str(out)))
        if failure is not None:
            raise failure from None
        raise


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` by rename, moving an existing `out` aside first and deleting it after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:  # put the previous folder back: a failed write must not lose it
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
