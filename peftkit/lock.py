"""The versions the tests passed on (``lock/requirements.txt``) against the versions installed here.

`peftkit doctor` reports the difference and every adapter manifest records it, so a result made on other versions
says so. ``python -m peftkit.lock`` prints it (``make upgrade`` uses that to show what an upgrade changes).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "requirements.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass(frozen=True)
class Drift:
    """Installed packages that differ from the lock. ``lock`` is None when no lock file ships with this install."""

    lock: Path | None
    checked: int
    differs: dict[str, tuple[str | None, str]]  # name -> (installed or None when missing, locked)

    @property
    def matches(self) -> bool:
        return self.lock is not None and not self.differs

    def summary(self, limit: int = 6) -> str:
        """One line: ``transformers 5.24.0 (locked 5.23.0), ...``."""
        items = [f"{n} {have or 'missing'} (locked {want})" for n, (have, want) in self.differs.items()]
        more = f", and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    def to_json(self) -> dict:
        return {
            "lock": str(self.lock) if self.lock else None,
            "matches": self.matches,
            "differs": {n: {"installed": have, "locked": want} for n, (have, want) in self.differs.items()},
        }


def lock_file() -> Path | None:
    """The lock this install was made from: ``peftkit/_lock`` in a wheel, ``lock/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_lock" / LOCK_NAME, here.parent / "lock" / LOCK_NAME):
        if candidate.is_file():
            return candidate
    return None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file (hash and comment lines skipped), names normalised."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := _PIN.match(line.strip()):
            pins[_normal(match[1])] = match[2]
    return pins


def drift(lock: Path | None = None) -> Drift:
    """Compare every locked package with what is installed. torch is pinned in ``lock/pins.txt`` (one version, a
    build per machine): ``2.13.0+cu128`` matches a locked ``2.13.0+cpu``."""
    from importlib.metadata import PackageNotFoundError, version

    lock = lock or lock_file()
    if lock is None:
        return Drift(None, 0, {})
    pins = read_pins(lock)
    pins_file = lock.parent / "pins.txt"
    if "torch" not in pins and pins_file.is_file() and (torch := read_pins(pins_file).get("torch")):
        pins["torch"] = torch
    differs = {}
    for name, want in pins.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != want.split("+")[0]:
            differs[name] = (have, want)
    return Drift(lock, len(pins), differs)


def main(argv: list[str]) -> int:
    result = drift(Path(argv[0]) if argv else None)
    if result.lock is None:
        print("no lock file found beside this install")
        return 0
    if result.matches:
        print(f"all {result.checked} packages match {result.lock}")
        return 0
    print(f"{len(result.differs)} of {result.checked} packages differ from {result.lock}:")
    for name, (have, want) in result.differs.items():
        print(f"  {name:28s} {have or 'missing':>16s}   locked {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
