"""Reading JSON files with one-line errors, and atomic writes: a file or folder is written under a temporary name beside its target and renamed into place.

Rename is atomic on one file system, so a reader (or a kill) never sees half a file; on failure the temporary
is removed. Every writer in peftkit goes through here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError


def read_json(path: Path) -> Any:
    """The JSON in `path`, or a one-line error naming the file, line and what is wrong."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PeftkitError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it is renamed onto `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` by rename, moving an existing `out` aside first and deleting it after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
