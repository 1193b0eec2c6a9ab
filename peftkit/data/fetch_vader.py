"""Fetch the Amazon review sentences behind ``builtin:amazon-snippets`` into peftkit's cache, once, hash-checked.

    python -m peftkit.data.fetch_vader                        # set-up runs this; a no-op once the file is there
    python -m peftkit.data.fetch_vader --sdist vaderSentiment-3.3.2.tar.gz   # offline, from a copy you have

The file, ``amazonReviewSnippets_GroundTruth.txt`` (Hutto & Gilbert, ICWSM 2014; MIT licence), ships only in the
*source* distribution of ``vadersentiment`` 3.3.2, inside ``additional_resources/hutto_ICWSM_2014.tar.gz``; the wheel
does not have it, so it cannot be a hashed ``--no-deps`` install like the other packaged data. Instead: pip downloads
the sdist (``pip download --no-deps --no-binary :all: --require-hashes``, through whatever index pip is configured
with) from a requirements file that pins `SDIST_SHA256`. pip prepares an sdist's metadata (runs its ``setup.py``)
even to download it; ``--require-hashes`` makes pip check the archive's sha256 first and refuse a different archive
before any of it runs. peftkit checks the hash again, and only that one file is extracted, checked against
`FILE_SHA256`, and written to
``<cache>/data/vadersentiment-3.3.2/`` (a temporary file, then a rename, so a failed run never leaves half a file).
Nothing is installed and nothing from the package is imported. ``<cache>`` is ``$PEFTKIT_CACHE`` or
``~/.cache/peftkit``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from peftkit.artifacts.io import atomic_path
from peftkit.errors import PeftkitError

PACKAGE = "vadersentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"
FILE_SHA256 = "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"
COMMAND = "python -m peftkit.data.fetch_vader"


def snippets_path() -> Path:
    """Where the fetched file lives: ``<peftkit cache>/data/vadersentiment-3.3.2/<file>``."""
    from peftkit.models import cache_dir

    return cache_dir() / "data" / "vadersentiment-3.3.2" / Path(MEMBER).name


def fetch(sdist: Path | None = None) -> Path:
    """Put the Amazon sentences file in the cache unless it is already there with the right hash.

    Args:
        sdist: a local ``vaderSentiment-3.3.2.tar.gz`` to read instead of downloading one with pip.

    Returns:
        The file's path (`snippets_path`).

    Raises:
        PeftkitError: pip could not download the sdist, or a hash does not match, or the archive lacks the file.
    """
    target = snippets_path()
    if target.is_file() and _sha256(target.read_bytes()) == FILE_SHA256:
        return target
    if sdist is not None:
        return _install(_read_checked(Path(sdist)), target)
    with tempfile.TemporaryDirectory(prefix="peftkit-vader-") as tmp:
        return _install(_read_checked(_download(Path(tmp))), target)


def _download(folder: Path) -> Path:
    # The hash pinned in a requirements file: pip refuses any other archive before it runs the sdist's setup.py.
    pinned = folder / "requirements.txt"
    pinned.write_text(f"{PACKAGE} --hash=sha256:{SDIST_SHA256}\n", encoding="utf-8")
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    command += ["--require-hashes", "-r", str(pinned)]
    done = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True)
    found = folder / SDIST
    if done.returncode != 0 or not found.is_file():
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no file came back"]
        raise PeftkitError(
            f"could not download {PACKAGE} with pip ({errors[-1][:200]}); reach pip's package index and rerun "
            f"`{COMMAND}`, "
            f"or pass a copy of {SDIST}: `{COMMAND} --sdist PATH`"
        )
    return found


def _read_checked(sdist: Path) -> bytes:
    if not sdist.is_file():
        raise PeftkitError(f"--sdist {sdist} does not exist; give the path of {SDIST}")
    data = sdist.read_bytes()
    if (digest := _sha256(data)) != SDIST_SHA256:
        raise PeftkitError(
            f"{sdist}: sha256 {digest} is not {SDIST}'s {SDIST_SHA256}; pass the real {SDIST}, "
            f"or run `{COMMAND}` without --sdist to download it"
        )
    return data


def _install(sdist: bytes, target: Path) -> Path:
    try:
        with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as outer:
            inner = outer.extractfile(INNER_TAR)
            with tarfile.open(fileobj=io.BytesIO(inner.read()), mode="r:gz") as resources:
                content = resources.extractfile(MEMBER).read()
    except (KeyError, AttributeError, tarfile.TarError) as exc:  # a member missing, or not a regular file
        raise PeftkitError(f"{SDIST} has no readable {MEMBER} ({exc}); is it the real 3.3.2 sdist?") from exc
    if (digest := _sha256(content)) != FILE_SHA256:
        raise PeftkitError(f"{MEMBER} in {SDIST} has sha256 {digest}, not the expected {FILE_SHA256}")
    with atomic_path(target) as tmp:  # created with the umask's mode, as the cache's other files
        tmp.write_bytes(content)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help=f"a local {SDIST} to use instead of downloading it")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.sdist)
    except PeftkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"amazon review sentences: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
