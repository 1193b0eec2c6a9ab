"""Dropout masks drawn from random bits on CPU, for training.

``nn.Dropout`` on CPU draws its mask with ``bernoulli_``, one random number per element: torch's profiler put it at
12.5% of a bf16 SmolLM2 LoRA step (LoRA's dropout on every targeted input, 60 calls a step). Filling int64 words
with random bits and comparing 16 bits per element against a threshold gives the same Bernoulli mask in less than half
the time, forward and backward (benchmarks/bf16/README.md). No library offers this, hence the hand-written module.

The keep probability is quantised to 1/65536 and the scale uses the quantised value, so the layer stays unbiased:
E[dropout(x)] = x. It draws from torch's default generator, so ``torch.manual_seed`` makes runs repeatable. On CUDA,
and in eval mode, it is ``nn.Dropout`` exactly.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # 16 random bits per element


class BitsDropout(nn.Dropout):
    """``nn.Dropout`` with the mask drawn from 16 random bits per element on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        drop = round(self.p * _LEVELS)
        if drop >= _LEVELS:
            return x * 0
        return x * keep_mask(x, drop)


def keep_mask(x: torch.Tensor, drop: int) -> torch.Tensor:
    """1 / (1 - drop / 65536) where an element is kept, 0 where dropped: a (x.shape) tensor in x's dtype."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    # The full int64 range, so every bit is uniform (a bare random_() leaves the top bit 0).
    words.random_(-(1 << 63), (1 << 63) - 1)
    bits = words.view(torch.int16)[:n].view(x.shape)
    keep = bits >= (drop - (_LEVELS // 2))  # int16 runs from -32768: P(keep) = 1 - drop / 65536
    return keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - drop))


def install(model: nn.Module) -> int:
    """Swap every active ``nn.Dropout`` in `model` (base and adapters) for `BitsDropout`; returns how many.

    Dropout modules hold no weights, so state dicts, saved adapters and plain-peft loading are unchanged.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(parent, name, BitsDropout(child.p))
                swapped += 1
    return swapped
