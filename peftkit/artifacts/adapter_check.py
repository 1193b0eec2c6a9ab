"""Checking an adapter folder's files before any model work: a damaged or foreign folder is one line naming the
file and what is wrong, never a traceback from deep inside safetensors, peft or torch, and never silent answers.

What `check_adapter_files` reads: ``adapter_config.json`` (present, a JSON object), ``adapter_model.safetensors``
(parses, holds tensors, every tensor a floating-point one with finite values) and the task head among them (present,
its output layer as wide as the manifest's ``num_outputs``). Shapes against the base are checked when the weights
load (`loading_errors`), since only the base knows them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from peftkit.artifacts.io import read_json
from peftkit.artifacts.manifest import Manifest
from peftkit.artifacts.names import ADAPTER_CONFIG, WEIGHTS
from peftkit.errors import PeftkitError

HEAD_MODULES = (
    "classifier",
    "score",
)  # the task heads transformers' sequence classifiers have (models.HEAD_NAMES)


def check_adapter_files(folder: Path, manifest: Manifest) -> None:
    """Refuse an adapter folder whose files cannot give answers, naming the file and what is wrong.

    Raises:
        PeftkitError: ``adapter_config.json`` missing or not a JSON object; the weights file empty, truncated or
            not safetensors; a tensor that is not floating point or holds NaN/inf; no task head; a head whose
            output width differs from the manifest's.
    """
    folder = Path(folder)
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise PeftkitError(f"{config} is missing: not an adapter folder written by peftkit train")
    if not isinstance(read_json(config), dict):
        raise PeftkitError(f"{config}: a JSON object expected; the adapter folder is damaged")
    tensors = _read_weights(folder / WEIGHTS)
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise PeftkitError(
                f"{folder / WEIGHTS}: tensor {key} is {tensor.dtype}, not floating point; damaged"
            )
        if not bool(tensor.isfinite().all()):
            raise PeftkitError(
                f"{folder / WEIGHTS}: tensor {key} holds NaN or infinite values (a diverged run?); retrain it"
            )
    heads = {k: t for k, t in tensors.items() if _is_head(k)}
    if not heads:
        raise PeftkitError(
            f"{folder / WEIGHTS} holds no task head ({' or '.join(HEAD_MODULES)} weights); the adapter is damaged"
        )
    widths = {t.shape[0] for k, t in heads.items() if k.endswith("weight") and t.dim() == 2}
    if widths and manifest.num_outputs not in widths:
        raise PeftkitError(
            f"{folder / WEIGHTS}: the task head has {sorted(widths)} outputs, but {folder / 'peftkit.json'} says "
            f"{manifest.num_outputs} (labels {manifest.labels}); the files do not belong together"
        )


def _is_head(key: str) -> bool:
    parts = key.split(".")
    return any(p in HEAD_MODULES for p in parts)


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise PeftkitError(
            f"{path.parent} has no {path.name}: not an adapter folder written by peftkit train"
        )
    if path.stat().st_size == 0:
        raise PeftkitError(f"{path} is empty; the adapter folder is damaged (copy it again or retrain)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise PeftkitError(
            f"{path} is not a readable safetensors file ({reason}); the adapter is damaged"
        ) from None
    if not tensors:
        raise PeftkitError(f"{path} holds no tensors; the adapter folder is damaged")
    return tensors


@contextlib.contextmanager
def loading_errors(folder: Path, base: str) -> Iterator[None]:
    """Turn a failure to put the adapter's weights on the base (shapes, names) into one line naming both."""
    try:
        yield
    except PeftkitError:
        raise
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise PeftkitError(f"adapter {folder} does not load onto base {base}: {reason}") from None
