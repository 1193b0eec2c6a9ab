"""One base model's weights under several questions: each question gets its own module tree over the same tensors.

A bank of questions (intent, churn, value tier...) holds adapters of different methods, heads of different widths and
possibly different poolings, all over one base. Methods change the module tree they attach to (peft wraps linear
layers for LoRA, the bottleneck method inserts modules, prefix tuning switches the attention function), and a head
is one module per model, so two questions cannot share one tree. They can share its tensors: `question_model` copies
the pristine, never-attached base's modules while every frozen parameter and buffer stays the very same tensor, so
the base's weights are in memory once however many questions there are. Only the head is the question's own, sized
to its outputs (its weights come from each adapter's file when the adapter loads).

``copy.deepcopy`` with a pre-filled memo does the structural copy; nothing in torch or transformers offers a copy
that shares parameters, hence this module.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from peftkit import pooling as poolings


def question_model(pristine: nn.Module, head_names: tuple[str, ...], num_outputs: int, pooling: str | None):
    """A model over `pristine`'s weights with a head of `num_outputs` outputs, pooling as `pooling` says.

    Args:
        pristine: a base as `peftkit.models.load_base` returns it with ``pooling=None``, to which no adapter is ever
            attached.
        head_names: its head modules (``("classifier",)``, ``("score",)``): copied, not shared, since adapters
            write their own head weights into them.
        num_outputs: the question's head width.
        pooling: the question's pooling (`peftkit.pooling.apply`).
    """
    own = {id(p) for name in head_names for p in pristine.get_submodule(name).parameters()}
    memo: dict[int, object] = {
        id(t): t for t in itertools.chain(pristine.parameters(), pristine.buffers()) if id(t) not in own
    }
    for module in pristine.modules():
        # bitsandbytes' Linear8bitLt keeps its int8 matrices in a MatmulLtState beside the weight: shared as well.
        state = getattr(module, "state", None)
        if type(state).__name__ == "MatmulLtState":
            memo[id(state)] = state
    model = copy.deepcopy(pristine, memo)
    for name in head_names:
        _resize_outputs(model.get_submodule(name), model.config.num_labels, num_outputs)
    model.config.num_labels = num_outputs
    if hasattr(model, "num_labels"):
        model.num_labels = num_outputs
    poolings.apply(model, pooling)
    return model.eval()


def _resize_outputs(head: nn.Module, old: int, new: int) -> None:
    """Give the head's output layer `new` outputs, in place (its hooks and place in the model kept)."""
    if old == new:
        return
    for layer in [m for m in head.modules() if isinstance(m, nn.Linear) and m.out_features == old]:
        weight = layer.weight
        layer.weight = nn.Parameter(
            torch.zeros(new, layer.in_features, dtype=weight.dtype, device=weight.device), requires_grad=False
        )
        if layer.bias is not None:
            layer.bias = nn.Parameter(
                torch.zeros(new, dtype=layer.bias.dtype, device=layer.bias.device), requires_grad=False
            )
        layer.out_features = new
