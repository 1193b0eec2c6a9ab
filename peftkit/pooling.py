"""How a sequence becomes the one vector the task head reads: the pooling the base was trained for.

- ``mean``: the attention-masked mean of the last hidden states. Sentence-transformers and E5-style encoders were
  trained to put a sentence's meaning there, and their folders say so (``1_Pooling/config.json``); their ``[CLS]``
  pooler was never trained for it (all-MiniLM-L6-v2's is a leftover of BERT's next-sentence objective).
- ``cls``: ``[CLS]`` through the checkpoint's pooler, what transformers' BERT classifier does.
- ``last``: the last non-pad token, what transformers' decoder classifiers do.

``auto`` resolves once, when training starts: ``mean`` or ``cls`` where the folder has a pooling config, otherwise
``last`` for decoders and ``cls`` for encoders. The resolved value is saved in the manifest's config, so a reload
pools exactly as training did; manifests from before pooling was a setting have none and keep transformers' own.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from peftkit.errors import PeftkitError

POOLINGS = ("auto", "mean", "cls", "last")


def _is_decoder(config: dict) -> bool:
    return any(
        arch.endswith(("ForCausalLM", "ForConditionalGeneration"))
        for arch in config.get("architectures") or []
    )


def _trained_pooling(folder: Path) -> str | None:
    """``mean``/``cls`` from a sentence-transformers pooling config, None when the folder has none (or another)."""
    path = Path(folder) / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    modes = json.loads(path.read_text())
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve(folder: Path, config: dict, requested: str) -> str:
    """The concrete pooling for a base (its HF folder and ``config.json``), refusing one its architecture lacks."""
    decoder = _is_decoder(config)
    if requested == "auto":
        return _trained_pooling(folder) or ("last" if decoder else "cls")
    if decoder and requested != "last":
        raise PeftkitError(
            f"model.pooling={requested}: {config.get('model_type')} is a decoder, whose classifier reads the last "
            "non-pad token; use model.pooling=last (or auto)"
        )
    if not decoder and requested == "last":
        raise PeftkitError(
            f"model.pooling=last is for decoders; this {config.get('model_type')} encoder pools with mean or cls"
        )
    return requested


class MeanPooler(nn.Module):
    """Stands in for a BERT-family pooler: the masked mean of the last hidden states instead of ``[CLS]``.

    The pooler is called with the hidden states only, so the backbone's attention mask is captured by a forward
    pre-hook (`apply`) just before.
    """

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, d)
        if self.mask is None:
            return hidden.mean(dim=1)
        weights = self.mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def apply(model: nn.Module, pooling: str | None) -> None:
    """Make a loaded transformers classifier pool as `pooling` says (``cls``, ``last`` and None: its own)."""
    if pooling in (None, "cls", "last"):
        return
    if pooling != "mean":
        raise PeftkitError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None or getattr(backbone, "pooler", None) is None:
        raise PeftkitError(
            f"model.pooling=mean needs an encoder whose classifier reads a pooler (BERT family); this "
            f"{model.config.model_type} model has none; use model.pooling=auto"
        )
    backbone.pooler = MeanPooler()
    backbone.register_forward_pre_hook(_keep_mask, with_kwargs=True)


def _keep_mask(backbone: nn.Module, args, kwargs) -> None:
    # Looks the pooler up on the module it is called with, not a captured one: a structural copy of the model (a
    # bank's question over shared base weights, `peftkit.inference.shared_base`) then pools with its own pooler.
    backbone.pooler.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
