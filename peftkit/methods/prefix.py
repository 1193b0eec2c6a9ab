"""Prefix tuning (Li & Liang, 2021, arXiv:2101.00190).

The base stays frozen; every self-attention layer sees ``num_virtual_tokens`` extra trainable key/value vectors
before the real ones, which steer the model toward the task. Only the prefix (optionally produced by a small MLP,
the paper's reparametrisation) and the task head train.

peftkit owns the mechanism instead of using peft's: peft hands the prefix to the model as a KV cache through
``past_key_values``, which transformers 5.24 no longer threads through its sequence-classification models, so every
peft prefix run fails there. Here the prefix enters at the attention call itself: the base's attention
implementation is switched to ``peftkit_prefix``, a function registered with transformers' attention interface that
prepends the layer's prefix keys/values and opens their columns in the attention mask before calling SDPA. Any model
whose attention goes through that interface works (BERT-family encoders, Llama, Gemma...), in fp32, bf16 and 8-bit.

The folder format is peft's PREFIX_TUNING (``prompt_embeddings``: (P, layers * 2 * kv_heads * head_dim), the head
under ``base_model.<head>``), and real tokens sit at positions P..P+T-1 as peft's cache path puts them, so plain peft
loads the folder with identical logits wherever its own prefix path works (transformers <= 5.23). The prefix cannot
use gradient checkpointing (a shared prefix read inside every checkpointed layer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from peftkit.artifacts.names import ADAPTER_CONFIG, WEIGHTS
from peftkit.errors import PeftkitError
from peftkit.methods._own import (
    DEFAULT_ADAPTER,
    head_params,
    read_weights,
    set_head,
)
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec
from peftkit.methods.prefix_attention import Layout, attention_layers

EMBEDDINGS = "prompt_embeddings"  # peft's key for the saved prefix
HEAD_KEY_PREFIX = "base_model."  # peft keeps a prompt-learning model's head weights under base_model.<head>


class PrefixOptions(MethodOptions):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(
        16, gt=0, description="prefix length; longer: more capacity, more attention cost"
    )
    prefix_projection: bool = Field(
        False, description="reparametrise the prefix through an MLP (stabler, bigger)"
    )
    encoder_hidden_size: int | None = Field(None, gt=0, description="MLP width when prefix_projection is on")


class PrefixEncoder(nn.Module):
    """One adapter's prefix: a (P, layers * 2 * heads * head_dim) table, or an MLP over a (P, heads * head_dim) one."""

    def __init__(self, tokens: int, layout: Layout, projection_hidden: int | None = None):
        super().__init__()
        token_dim = layout.heads * layout.head_dim
        self.embedding = nn.Embedding(tokens, token_dim if projection_hidden else layout.width)
        self.transform = (
            nn.Sequential(
                nn.Linear(token_dim, projection_hidden), nn.Tanh(), nn.Linear(projection_hidden, layout.width)
            )
            if projection_hidden
            else None
        )

    def forward(self) -> torch.Tensor:
        table = self.embedding.weight
        return table if self.transform is None else self.transform(table)  # (P, width)


class PrefixModel(nn.Module):
    """The HF model (``.model``) whose attention layers read the active adapter's prefix.

    A plain `nn.Module` without attribute forwarding, like the bottleneck model: HF Trainer refuses to train a model
    that reports ``is_quantized`` (an 8-bit base) unless it is a peft model.
    """

    def __init__(
        self, model: nn.Module, options: PrefixOptions, head_names, layout: Layout, attention_modules: list
    ):
        super().__init__()
        self.model = model
        self.options = options
        self.head_names = tuple(head_names)
        self.layout = layout
        self.prompt_encoder = nn.ModuleDict()
        self.head_weights: dict[str, dict[str, torch.Tensor]] = {}  # each loaded adapter's own head
        self.active_adapter = DEFAULT_ADAPTER
        self._attention = attention_modules  # a plain list: these modules are already registered under .model

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        # Named (not just **kwargs) because HF Trainer drops batch columns the forward signature does not name.
        if input_ids is None:
            raise PeftkitError("prefix tuning needs input_ids (inputs_embeds are not supported)")
        lay = self.layout
        prefix = self.prompt_encoder[self.active_adapter]()  # (P, layers * 2 * heads * head_dim)
        tokens = prefix.shape[0]
        kv = prefix.view(tokens, lay.layers, 2, lay.heads, lay.head_dim).permute(
            1, 2, 3, 0, 4
        )  # (L, 2, H, P, D)
        batch, length = input_ids.shape
        # Real tokens follow the prefix, as in peft's cache path (BERT's learned positions, Llama's RoPE alike).
        positions = torch.arange(tokens, tokens + length, device=input_ids.device).expand(batch, length)
        kwargs.setdefault("position_ids", positions)
        extra = {"token_type_ids": token_type_ids, "labels": labels}
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        for module, layer_kv in zip(self._attention, kv):
            module._peftkit_prefix = layer_kv
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            for module in self._attention:
                module._peftkit_prefix = None


def apply(base: nn.Module, opts: PrefixOptions, ctx: MethodContext) -> PrefixModel:
    heads = head_params(base, ctx.head_names)  # all checks done before the model is changed
    modules, layout = attention_layers(base)
    base.requires_grad_(False)
    model = PrefixModel(base, opts, ctx.head_names, layout, modules)
    hidden = (opts.encoder_hidden_size or base.config.hidden_size) if opts.prefix_projection else None
    encoder = PrefixEncoder(opts.num_virtual_tokens, layout, hidden)
    model.prompt_encoder[DEFAULT_ADAPTER] = encoder.to(next(base.parameters()).device)
    for p in heads.values():
        p.requires_grad_(True)
    return model


def save(model: PrefixModel, folder: Path) -> None:
    """peft's PREFIX_TUNING folder: the prefix as computed (the MLP, if any, folded in) and the head."""
    from peft import PrefixTuningConfig, TaskType
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        prefix = model.prompt_encoder[model.active_adapter]()
    tensors = {EMBEDDINGS: prefix.detach().float().cpu().contiguous()}
    for key, p in head_params(model.model, model.head_names).items():
        tensors[HEAD_KEY_PREFIX + key] = p.detach().cpu().contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    opts, lay = model.options, model.layout
    PrefixTuningConfig(
        task_type=TaskType.SEQ_CLS,
        num_virtual_tokens=prefix.shape[0],
        num_layers=lay.layers,
        token_dim=lay.heads * lay.head_dim,
        num_attention_heads=lay.heads,
        prefix_projection=opts.prefix_projection,
        encoder_hidden_size=opts.encoder_hidden_size or model.config.hidden_size,
        modules_to_save=list(model.head_names),
        inference_mode=True,
    ).save_pretrained(str(folder))


def _read(folder: Path) -> tuple[dict, torch.Tensor, dict[str, torch.Tensor]]:
    """(config, prefix (P, width), head tensors keyed by path in the HF model) of a prefix adapter folder."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise PeftkitError(f"{folder} has no {ADAPTER_CONFIG}: not an adapter folder")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "PREFIX_TUNING":
        raise PeftkitError(f"{path} is not a prefix-tuning adapter (peft_type {config.get('peft_type')!r})")
    tensors = read_weights(folder)
    if EMBEDDINGS not in tensors:
        raise PeftkitError(f"{folder / WEIGHTS} has no {EMBEDDINGS!r} tensor")
    head = {k.removeprefix(HEAD_KEY_PREFIX): t for k, t in tensors.items() if k.startswith(HEAD_KEY_PREFIX)}
    return config, tensors[EMBEDDINGS], head


def _head_names(head: dict[str, torch.Tensor]) -> tuple[str, ...]:
    # From the weights, not the config: peft appends its default head names to `modules_to_save` when it saves.
    return tuple(dict.fromkeys(k.rsplit(".", 1)[0] for k in head))


def _check_fits(folder: Path, config: dict, prefix: torch.Tensor, layout: Layout) -> None:
    made_for = Layout(
        config["num_layers"],
        config["num_attention_heads"],
        config["token_dim"] // config["num_attention_heads"],
    )
    if made_for != layout or prefix.shape[1] != layout.width:
        raise PeftkitError(
            f"{folder}: its prefix was made for {made_for.layers} attention layers x {made_for.heads} key/value "
            f"heads x {made_for.head_dim}, this base has {layout.layers} x {layout.heads} x {layout.head_dim} "
            "(a different model size?)"
        )


def _checked_head(folder: Path, model: PrefixModel, head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    params = head_params(model.model, model.head_names)
    if params.keys() != head.keys():
        raise PeftkitError(f"{folder}: head weights {sorted(head)} do not fit this model's {sorted(params)}")
    for key, p in params.items():
        if head[key].shape != p.shape:
            raise PeftkitError(
                f"{folder}: {key} has shape {tuple(head[key].shape)} in the file, {tuple(p.shape)} in this base"
            )
    return {k: t.to(device=params[k].device, dtype=params[k].dtype) for k, t in head.items()}


def _add_adapter(model: PrefixModel, folder: Path, name: str, config: dict, prefix, head) -> None:
    _check_fits(folder, config, prefix, model.layout)
    head = _checked_head(folder, model, head)
    encoder = PrefixEncoder(prefix.shape[0], model.layout)  # inference form: the saved table, no MLP
    with torch.no_grad():
        encoder.embedding.weight.copy_(prefix)
    model.prompt_encoder[name] = encoder.to(next(model.model.parameters()).device).requires_grad_(False)
    model.head_weights[name] = head


def attach(base: nn.Module, folder: Path, name: str = DEFAULT_ADAPTER) -> PrefixModel:
    config, prefix, head = _read(folder)
    heads = _head_names(head)
    head_params(base, heads)  # all checks done before the model is changed
    modules, layout = attention_layers(base)
    base.requires_grad_(False)
    opts = PrefixOptions(
        num_virtual_tokens=prefix.shape[0],
        prefix_projection=bool(config.get("prefix_projection")),
        encoder_hidden_size=config.get("encoder_hidden_size"),
    )
    model = PrefixModel(base, opts, heads, layout, modules)
    _add_adapter(model, Path(folder), name, config, prefix, head)
    set_adapter(model, name)
    return model.eval()


def load_adapter(model: PrefixModel, folder: Path, name: str) -> None:
    """Add the adapter in `folder` under `name`, beside those already loaded; the active one does not change."""
    if name in model.head_weights:
        raise PeftkitError(f"an adapter named {name!r} is already loaded")
    config, prefix, head = _read(folder)
    if _head_names(head) != model.head_names:
        raise PeftkitError(
            f"{folder} trains head {_head_names(head)}, the adapters loaded {model.head_names}"
        )
    _add_adapter(model, Path(folder), name, config, prefix, head)


def set_adapter(model: PrefixModel, name: str) -> None:
    if name not in model.head_weights:
        raise PeftkitError(f"no adapter named {name!r} is loaded (loaded: {', '.join(model.head_weights)})")
    set_head(model.model, model.head_names, model.head_weights[name])
    model.active_adapter = name


def delete_adapter(model: PrefixModel, name: str) -> None:
    if name == model.active_adapter:
        raise ValueError(f"adapter {name!r} is active; switch to another before deleting it")
    del model.prompt_encoder[name]
    del model.head_weights[name]


def warm_start(model: PrefixModel, folder: Path) -> None:
    """Start the freshly applied prefix and head from a saved adapter of the same length (also: Trainer resume)."""
    config, prefix, head = _read(folder)
    encoder = model.prompt_encoder[model.active_adapter]
    if encoder.transform is not None:
        raise PeftkitError(
            f"{folder}: a prefix trained through its MLP is saved as the computed table, which cannot restart the "
            "MLP; set method.prefix_projection: false to warm-start or resume"
        )
    _check_fits(folder, config, prefix, model.layout)
    if prefix.shape != encoder.embedding.weight.shape:
        raise PeftkitError(
            f"{folder}: {prefix.shape[0]} virtual tokens, this adapter {encoder.embedding.num_embeddings}; train "
            "the segment adapters with the same method options as the global one"
        )
    head = _checked_head(folder, model, head)
    with torch.no_grad():
        encoder.embedding.weight.copy_(prefix)
    set_head(model.model, model.head_names, head)


def plain_peft_runs_prefix(model: nn.Module) -> bool:
    """Whether plain peft's own prefix path runs on this transformers model: it needs ``past_key_values`` in the
    forward of the model or its backbone, which transformers 5.24 dropped from the classification models."""
    import inspect

    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return any(
        m is not None and "past_key_values" in inspect.signature(m.forward).parameters
        for m in (model, backbone)
    )


def describe(folder: Path) -> dict:
    config, prefix, _ = _read(Path(folder))
    return {
        "num_virtual_tokens": prefix.shape[0],
        "layers": config["num_layers"],
        "kv_heads": config["num_attention_heads"],
        "head_dim": config["token_dim"] // config["num_attention_heads"],
        "prefix_projection": bool(config.get("prefix_projection")),
    }


SPEC = MethodSpec(
    name="prefix",
    summary="trainable key/value prefix in every attention layer (peftkit's own, peft's file format); base untouched",
    options=PrefixOptions,
    default_lr=1e-2,
    peft_native=True,
    supports_gradient_checkpointing=False,
    apply=apply,
    attach=attach,
    save=save,
    describe=describe,
    load_adapter=load_adapter,
    set_adapter=set_adapter,
    delete_adapter=delete_adapter,
    warm_start=warm_start,
)
