"""Writing an adapter folder: refuse to overwrite a different one, then write it complete and rename it in place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftkit.artifacts.cards import model_card, write_loss_curve
from peftkit.artifacts.io import atomic_folder, read_json
from peftkit.artifacts.manifest import Manifest
from peftkit.artifacts.names import CARD, LOSS_PLOT, MANIFEST, WEIGHTS
from peftkit.errors import PeftkitError


def holds_output(out: Path, marker: str, what: str, folder_for: str = "") -> bool:
    """Whether the ``--output`` folder `out` already holds `what` (its `marker` file is there); False when it is
    absent or empty; refused when it is a file or holds anything else, which peftkit must never replace."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise PeftkitError(f"--output {out} is a file; choose a folder path{folder_for}")
    if not any(out.iterdir()):
        return False
    if not (out / marker).is_file():
        raise PeftkitError(f"--output {out} exists and is not {what}; choose another --output")
    return True


def check_output(out: Path, config: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse to replace a different adapter (or any non-adapter content) unless told to."""
    if not holds_output(out, MANIFEST, "a peftkit adapter folder") or overwrite:
        return
    old = read_json(out / MANIFEST).get("config", {})  # only its config: older or partial manifests do too
    if old != config:
        diff = sorted(diff_keys(old, config))
        raise PeftkitError(
            f"--output {out} already holds a different adapter ({', '.join(diff[:4])} differ); "
            "pass --overwrite to replace it or choose another --output"
        )


def diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return set().union(*(diff_keys(a.get(k), b.get(k), f"{prefix}{k}.") for k in keys)) if keys else set()
    return {prefix.rstrip(".")} if a != b else set()


def adapter_size_bytes(folder: Path) -> int:
    return (folder / WEIGHTS).stat().st_size


def write_adapter_folder(
    save: Callable[[Path], None], out: Path, manifest: Manifest, log_history: list[dict]
) -> None:
    """Write a complete adapter folder at `out`, atomically: weights (via `save`), manifest, card, loss curve."""
    with atomic_folder(out) as tmp:
        save(tmp)
        if not (tmp / WEIGHTS).is_file():
            raise RuntimeError(f"method {manifest.method} wrote no {WEIGHTS}")
        manifest.adapter_bytes = adapter_size_bytes(tmp)
        manifest.write(tmp)
        (tmp / CARD).write_text(model_card(manifest, out.name), encoding="utf-8")
        write_loss_curve(log_history, tmp / LOSS_PLOT, f"{manifest.method} on {manifest.base.name}")
