"""peftkit: parameter-efficient fine-tuning for e-commerce user analysis.

import peftkit
model = peftkit.load("runs/reviews-minilm-l6-lora")
model.predict(["这台电脑散热很好", "房间太小了"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PeftkitError", "Predictor", "__version__", "load", "train"]

from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.predictor import Predictor


def load(
    adapter: str, *, base: str | None = None, quant: str | None = None, device: str | None = None
) -> Predictor:
    """Load an adapter folder onto its base model, ready to predict.

    Args:
        adapter: folder written by ``peftkit train``.
        base: base model (alias, folder or .gguf); defaults to the one recorded in the adapter's manifest. Refused
            when its weights hash differs from the recorded one.
        quant: ``"none"`` or ``"8bit"``; defaults to what the adapter was trained with.
        device: ``"cpu"``, ``"cuda"``...; defaults to CUDA when available.
    """
    from peftkit.predictor import load_predictor

    return load_predictor(adapter, base=base, quant=quant, device=device)


def train(config: Any) -> Any:
    """Train one adapter from a resolved `peftkit.config.RunConfig`; see `peftkit.train.train`."""
    from peftkit.train import train as _train

    return _train(config)
