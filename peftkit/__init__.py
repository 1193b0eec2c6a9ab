"""peftkit: parameter-efficient fine-tuning for e-commerce user analysis.

import peftkit
model = peftkit.load("runs/reviews-multilingual-e5-small-lora")   # what `peftkit train` with no arguments writes
model.predict(["这台电脑散热很好", "房间太小了"])

bank = peftkit.AdapterBank.open("banks/reviews")       # one base, one adapter per platform
bank.predict(["房间很干净", "纸质很差"], segments=["hotel", "book"])

Layout, lowest layer first. A module imports from its own layer or the ones below, never from above, and no two
modules import each other (tests/test_layout.py checks both; docs/architecture.md draws it):

    1   errors runtime lock tasks selection dropout heads pooling   what every layer may use
    2   artifacts              on-disk formats: file names, atomic writes, Manifest, BankFile, model cards
    3   bases models           finding, converting and loading a base model
    4   methods                one MethodSpec per PEFT method, the only place that knows a method
    5   config recipes         the typed run config and the packaged recipes
    6   data                   tables and packaged datasets into train/held-out splits
    7   inference              an adapter on its base (Predictor), adapter banks, HTTP serving
    8   training               the plan, the Trainer, the loop, segment banks, distributed launches
    9   export doctor compare evaluation refresh   jobs built on training and inference
    10  cli                    thin typer commands
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
