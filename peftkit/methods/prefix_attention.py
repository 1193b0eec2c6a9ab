"""Where prefix tuning's prefix enters the base: an attention function registered with transformers' attention
interface (`prefix_attention`), and the one forward pass that finds the base's attention layers (`attention_layers`).

`peftkit.methods.prefix` holds the method (its model, options, folder format); this module the attention maths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import PeftkitError

ATTENTION = "peftkit_prefix"  # the attention implementation name the base is switched to


@dataclass(frozen=True)
class Layout:
    """Key/value shape of the base's attention layers, as seen at the attention call (kv heads for GQA)."""

    layers: int
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        return self.layers * 2 * self.heads * self.head_dim


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: SDPA over [prefix; keys], the prefix visible to every query.

    query: (B, Hq, T, D); key/value: (B, H, T, D); the module's ``_peftkit_prefix``: (2, H, P, D).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from peftkit.models import attention_implementation

    if _TRACE is not None:
        _TRACE.append((module, tuple(key.shape)))
    prefix = getattr(module, "_peftkit_prefix", None)
    if prefix is not None:
        batch, tokens = key.shape[0], prefix.shape[2]
        pk, pv = (t.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1) for t in prefix)  # (B, H, P, D)
        key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
        attention_mask = _open_prefix(module, attention_mask, query.shape[2], tokens, query.device)
        kwargs["is_causal"] = False  # the mask says it all now
        if attention_implementation(query.dtype, query.device.type) == "eager":  # the base's own rule
            return eager_attention(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def eager_attention(module, query, key, value, mask, dropout: float = 0.0, scaling=None, **_):
    """Attention the eager way over a bf16 base on CPU, where torch's SDPA is several times slower in bf16
    (peftkit.models.attention_implementation): scores, softmax in float32, weighted sum. transformers' own eager
    functions are per architecture, and this one must take the prefix's mask, hence written here.

    query: (B, Hq, T, D); key/value: (B, H, P + T, D); mask: bool (True attends) or additive, (B or 1, 1, T, P + T).
    Returns (B, T, Hq, D), as transformers' attention functions do.
    """
    if (groups := query.shape[1] // key.shape[1]) > 1:  # grouped-query attention: share each key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask.to(scores.dtype)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return (weights @ value).transpose(1, 2).contiguous(), None


def _open_prefix(module, mask, q_len: int, tokens: int, device) -> torch.Tensor | None:
    """The mask with ``tokens`` visible columns in front; transformers leaves it None when no row is padded."""
    if mask is None:
        if not (getattr(module, "is_causal", True) and q_len > 1):  # SDPA's own default for a missing flag
            return None  # full attention over prefix and tokens
        mask = torch.ones(q_len, q_len, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, T, T)
    return F.pad(mask, (tokens, 0), value=True if mask.dtype == torch.bool else 0.0)


_TRACE: list | None = None  # set while `attention_layers` records the calls of one forward pass


def attention_layers(model: nn.Module) -> tuple[list[nn.Module], Layout]:
    """Switch `model` to the prefix attention and find its attention modules, in call order, by running it once.

    Running the model is what makes this independent of module names: whatever calls the attention interface is an
    attention layer. Two tokens on the model's own device (the meta device too, for ``peftkit doctor``).
    """
    global _TRACE
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, prefix_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.config._attn_implementation = ATTENTION
    device = next(model.parameters()).device
    ids = torch.ones((1, 2), dtype=torch.long, device=device)
    _TRACE = []
    try:
        with torch.no_grad():
            model(input_ids=ids)  # no mask: building one reads values, which the meta device has not
        calls = _TRACE
    finally:
        _TRACE = None
    modules = list({id(m): m for m, _ in calls}.values())
    shapes = {(shape[1], shape[3]) for _, shape in calls}
    if not modules:
        raise PeftkitError(
            f"prefix tuning: this {model.config.model_type} model's attention does not go through transformers' "
            "attention interface, so no prefix can be injected; use lora, adalora or bottleneck"
        )
    if len(shapes) > 1:
        raise PeftkitError(
            f"prefix tuning: this {model.config.model_type} model's attention layers have different key/value "
            f"shapes (heads, head_dim) {sorted(shapes)}; one prefix table cannot serve them; use lora"
        )
    heads, head_dim = shapes.pop()
    return modules, Layout(len(modules), heads, head_dim)
