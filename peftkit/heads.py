"""How a freshly loaded task head starts, before the first step: the part of a short run that a random head wastes.

- ``verbalizer`` (decoders): the head's row for a label starts as the language-model head's rows of that label's
  words (mean over its tokens). A decoder's classifier reads the same final hidden state its LM head does, so step 0
  already scores "positive" against "negative" as the pretrained model would; a few hundred rows refine it. For an
  ordinal task row k starts as (mean of the label rows above k) - (mean at or below k).
- ``cumulative link`` (ordinal tasks whose head has a bias, i.e. encoders): the K-1 outputs share one weight row and
  differ only by their bias, the thresholds: P(y > k) = sigmoid(w.h - theta_k) (McCullagh 1980's proportional odds).
  Biases start at the logits of the training labels' cumulative shares, so step 0 predicts the label distribution
  and the gradient of every threshold trains the one shared direction. The head stays a plain ``nn.Linear`` (K-1
  rows, all equal): saved, reloaded and loaded by plain peft like any other head. Rows are kept equal by giving
  each row the summed gradient (the gradient of the shared row), so every optimizer applies the same update to all.
- ``random``: transformers' own initialisation (the behaviour before these existed).

``model.head_init: auto`` picks verbalizer for decoders, cumulative link for ordinal encoder heads, random otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from peftkit.errors import PeftkitError

log = logging.getLogger("peftkit")

HEAD_INITS = ("auto", "verbalizer", "random")


def resolve(requested: str, model, *, decoder: bool, task: str) -> str:
    """The concrete head initialisation for a loaded `model`: ``verbalizer``, ``cumulative`` or ``random``."""
    if requested == "verbalizer":
        if not decoder:
            raise PeftkitError(
                "model.head_init=verbalizer needs a decoder (its LM head scores label words); encoders start from "
                "model.head_init=auto or random"
            )
        if not lm_head_is_embedding(model.config):
            raise PeftkitError(
                f"model.head_init=verbalizer: this {model.config.model_type} model's LM head is not its input "
                "embedding, and a classifier loads without it; set model.head_init=random"
            )
    if task == "regression":
        return "random"  # one output, no label words, no thresholds
    if requested == "auto":
        if decoder:
            return "verbalizer" if lm_head_is_embedding(model.config) else "random"
        return "cumulative" if task == "ordinal" else "random"
    return requested


def lm_head_is_embedding(config) -> bool:
    """The decoder's LM head is its input embedding (tied), so a classifier loaded without the LM head still has
    its rows."""
    tied = getattr(config, "tie_word_embeddings", None)
    if tied is None and hasattr(config, "get_text_config"):
        tied = getattr(config.get_text_config(), "tie_word_embeddings", None)
    return bool(tied)


def final_linear(module, num_outputs: int):
    """The head module's output layer: the last ``nn.Linear`` with ``num_outputs`` outputs (RoBERTa-style heads hold
    a dense layer before it)."""
    from torch import nn

    found = [m for m in module.modules() if isinstance(m, nn.Linear) and m.out_features == num_outputs]
    if not found:
        raise PeftkitError(f"no output layer with {num_outputs} outputs in the task head")
    return found[-1]


def initialise(
    model, head_names: Iterable[str], mode: str, *, labels, train_labels, tokenizer, task: str
) -> None:
    """Set the fresh head's weights as `mode` says (before the method wraps the model)."""
    import torch

    if mode == "random":
        return
    num_outputs = len(labels) - 1 if task == "ordinal" else len(labels)
    for name in head_names:
        layer = final_linear(getattr(model, name), num_outputs)
        with torch.no_grad():
            if mode == "verbalizer":
                rows = _label_word_rows(model, tokenizer, labels).to(layer.weight)
                if task == "ordinal":
                    rows = torch.stack(
                        [rows[k + 1 :].mean(0) - rows[: k + 1].mean(0) for k in range(num_outputs)]
                    )
                layer.weight.copy_(rows)
                if layer.bias is not None:
                    layer.bias.zero_()
            elif mode == "cumulative":
                if layer.bias is None:
                    raise PeftkitError(
                        "the cumulative-link ordinal head needs a head with a bias (its thresholds); this base's "
                        "head has none: set model.head_init=random"
                    )
                layer.weight.copy_(layer.weight[:1].expand_as(layer.weight).clone())
                layer.bias.copy_(
                    torch.from_numpy(cumulative_logits(train_labels, len(labels))).to(layer.bias)
                )
            else:
                raise PeftkitError(f"unknown head initialisation {mode!r}")
    log.info("head: %s initialisation", mode)


def cumulative_logits(train_labels, num_labels: int) -> np.ndarray:
    """logit P(y > k) for k = 0..K-2 from the training labels, with add-one smoothing so no share is 0 or 1."""
    counts = (
        np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_labels).astype(np.float64) + 1.0
    )
    above = 1.0 - np.cumsum(counts)[:-1] / counts.sum()
    return np.log(above / (1.0 - above)).astype(np.float32)


def tie_rows(model, head_names: Iterable[str], num_outputs: int) -> int:
    """Keep the rows of every trainable cumulative-link output layer equal: each row's gradient becomes the sum of
    all rows' (the gradient of the one shared row). Returns how many layers were tied."""
    from torch import nn

    tied = 0
    for name, module in model.named_modules():
        if not any(part in head_names for part in name.split(".")):
            continue
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, nn.Linear)
            and module.out_features == num_outputs
            and weight is not None
            and weight.requires_grad
        ):
            weight.register_hook(lambda grad: grad.sum(0, keepdim=True).expand_as(grad).clone())
            tied += 1
    return tied


def _label_word_rows(model, tokenizer, labels: list[str]):
    """(K, hidden) rows of the LM head for each label's words: the mean over the tokens of `` <label>``."""
    import torch

    embedding = model.get_input_embeddings().weight
    rows = []
    for label in labels:
        ids = tokenizer(" " + str(label).replace("_", " "), add_special_tokens=False)["input_ids"]
        if not ids:
            raise PeftkitError(f"model.head_init=verbalizer: label {label!r} has no tokens")
        rows.append(embedding[torch.tensor(ids, device=embedding.device)].float().mean(0))
    return torch.stack(rows)
