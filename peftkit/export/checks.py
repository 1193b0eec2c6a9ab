"""The refusals that come before anything is written: a method with no LoRA form, a merge onto int8 weights, an
``--output`` that would clobber something."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from peftkit.artifacts.manifest import Manifest
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS, MethodSpec

ToLora = Callable[[dict, dict], tuple[dict, dict]]


def lora_form(manifest: Manifest, folder: Path) -> ToLora:
    """The adapter's method's ``to_lora`` hook; refused, with the reason, for a method that has none."""
    spec = METHODS.get(manifest.method)
    if spec is not None and spec.to_lora is None:
        raise PeftkitError(
            f"adapter {folder} is a {spec.name} adapter and cannot be exported: {_why_not_lora(spec)}"
        )
    if spec is None:
        have = [name for name, s in METHODS.items() if s.to_lora is not None]
        raise PeftkitError(
            f"adapter {folder}: method {manifest.method!r} has no export; {' and '.join(have)} do"
        )
    return spec.to_lora


def _why_not_lora(spec: MethodSpec) -> str:
    """Why a method without ``to_lora`` has no plain-LoRA form, from what kind of adapter it saves."""
    if spec.full_model:
        return (
            "it is already a whole fine-tuned model (every weight trained); serve its folder as a model, not an "
            "adapter"
        )
    if not spec.peft_native:  # peftkit's own modules, inserted into the network
        return (
            f"{spec.name} adapters insert new layers (down/up projections with a non-linearity) after "
            "sublayers; no weight update B@A equals them"
        )
    # a peft method that changes activations rather than weights (prompt learning)
    return (
        f"{spec.name} tuning adds trained virtual key/value tokens to every attention layer, not a weight update, "
        "and vLLM/LoRAX serve LoRA adapters only"
    )


def check_merge(manifest: Manifest, folder: Path) -> None:
    """Refuse ``--merge`` for an adapter trained on an 8-bit base."""
    if manifest.quant == "8bit":
        raise PeftkitError(
            f"--merge: adapter {folder} was trained on an 8-bit (LLM.int8) base, whose int8 weights cannot take "
            "a merged update without re-quantising it; export without --merge (LoRA weights) instead"
        )


def check_output(out: Path, adapter: Path, overwrite: bool) -> None:
    """Refuse an ``--output`` that is a file, lies inside the adapter, or holds files (without ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise PeftkitError(f"--output {out} is a file; choose a folder path")
    if out.resolve() == adapter.resolve() or adapter.resolve() in out.resolve().parents:
        raise PeftkitError(f"--output {out} is inside the adapter folder {adapter}; choose another --output")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"--output {out} exists and is not empty; pass --overwrite to replace it or choose another --output"
        )
