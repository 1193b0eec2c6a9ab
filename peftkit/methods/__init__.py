"""The table of PEFT methods: ``--method`` choices come from here, and nothing else names a method.

To add a method, write ``peftkit/methods/<name>.py`` exposing ``SPEC`` (a `MethodSpec`) and add one row below.
"""

from __future__ import annotations

from peftkit.methods import adalora, bottleneck, full, lora, prefix
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec

METHODS: dict[str, MethodSpec] = {
    "lora": lora.SPEC,
    "adalora": adalora.SPEC,
    "prefix": prefix.SPEC,
    "bottleneck": bottleneck.SPEC,
    "full": full.SPEC,  # not PEFT: the reference `peftkit compare` judges the methods against
}

__all__ = ["METHODS", "MethodContext", "MethodOptions", "MethodSpec"]
