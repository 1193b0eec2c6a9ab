"""peftkit: parameter-efficient fine-tuning for e-commerce user analysis.

import peftkit
model = peftkit.load("runs/reviews-multilingual-e5-small-lora")   # what `peftkit train` with no arguments writes
model.predict(["这台电脑散热很好", "房间太小了"])

bank = peftkit.AdapterBank.open("banks/reviews")       # one base, one adapter per platform
bank.predict(["房间很干净", "纸质很差"], segments=["hotel", "book"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AdapterBank", "PeftkitError", "Predictor", "__version__", "load", "train"]

from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.inference.bank import AdapterBank
    from peftkit.inference.predictor import Predictor


def __getattr__(name: str):
    # Lazily: importing peftkit stays cheap (no torch) until a bank or a predictor is used.
    if name == "AdapterBank":
        from peftkit.inference.bank import AdapterBank

        return AdapterBank
    if name == "Predictor":
        from peftkit.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'peftkit' has no attribute {name!r}")


def load(
    adapter: str,
    *,
    base: str | None = None,
    quant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Predictor:
    """Load an adapter folder onto its base model, ready to predict.

    Args:
        adapter: folder written by ``peftkit train``.
        base: base model (alias, folder or .gguf); defaults to the one recorded in the adapter's manifest. Refused
            when its weights hash differs from the recorded one.
        quant: ``"none"`` or ``"8bit"``; defaults to what the adapter was trained with.
        device: ``"cpu"``, ``"cuda"``...; defaults to CUDA when available.
        dtype: ``"float32"`` or ``"bfloat16"`` for the base; defaults to the dtype the adapter was trained in, the
            one that reproduces its predictions exactly. Another dtype trades exactness for speed or portability.
    """
    from peftkit.inference.predictor import load_predictor

    return load_predictor(adapter, base=base, quant=quant, device=device, dtype=dtype)


def train(config: Any, **kwargs: Any) -> Any:
    """Train from a resolved `peftkit.config.RunConfig`: one adapter (`peftkit.training.loop.train`), or an adapter bank
    when the config has ``segments`` (`peftkit.training.segments.train_bank`)."""
    if config.segments is not None:
        from peftkit.training.segments import train_bank

        return train_bank(config, **kwargs)
    from peftkit.training.loop import train as _train

    return _train(config, **kwargs)
