"""Rows of many adapters into forward passes: the distinct adapters are answered ``max_loaded`` at a time, each group
in one pass for every adapter where the method allows it (peft LoRA's per-row ``adapter_names``), otherwise one pass
per adapter; rows come back in input order either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from peftkit.inference.adapter_cache import AdapterCache
from peftkit.inference.predictor import Predictor


def logits_by_adapter(
    cache: AdapterCache,
    texts: list[str],
    adapter_names: list[str],
    out: np.ndarray,
    *,
    predictor_for: Callable[[Any], Predictor],
    mixed_batch: bool,
) -> np.ndarray:
    """`out` (N, num_outputs) filled with row ``i`` through adapter ``adapter_names[i]``, in input order.

    ``predictor_for(model)`` wraps the model with the adapters attached. Call it holding ``cache.lock``, so that no
    other request switches adapters in between.
    """
    wanted = list(dict.fromkeys(adapter_names))
    # More distinct adapters than may be loaded at once: answer them max_loaded at a time.
    for start in range(0, len(wanted), cache.max_loaded):
        chunk = wanted[start : start + cache.max_loaded]
        cache.ensure(chunk)
        predictor = predictor_for(cache.model)
        members = set(chunk)
        rows = [i for i, name in enumerate(adapter_names) if name in members]
        if mixed_batch:  # one pass for every adapter
            ids = [cache.adapter_id(adapter_names[i]) for i in rows]
            out[rows] = predictor.logits([texts[i] for i in rows], ids)
            continue
        for name in chunk:  # one pass per adapter, rows put back in place
            group = [i for i in rows if adapter_names[i] == name]
            cache.activate(name)
            out[group] = predictor.logits([texts[i] for i in group])
    return out
