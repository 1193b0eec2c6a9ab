"""Bottleneck adapters (Houlsby et al., 2019, arXiv:1902.00751; Pfeiffer et al., 2021, arXiv:2005.00247).

The base stays frozen. Chosen sublayer outputs (the attention output projection and/or the MLP's output
projection, before the residual add) pass through a small residual MLP ``h + up(act(down(h)))``, with
``down: d -> bottleneck_dim`` and ``up: bottleneck_dim -> d``. Only these down/up projections (with biases) and the
task head train, typically 0.2-3% of the parameters; ``up`` starts at zero, so training starts exactly from the base
model. Houlsby places an adapter after attention and after the MLP, Pfeiffer only after the MLP (half the adapter
parameters, about the same accuracy). Adapter weights stay float32 over a bf16 or 8-bit base. peft has no such
method, so the folder format is peftkit's own: ``adapter_config.json`` (deliberately without ``peft_type``) and
``adapter_model.safetensors`` (adapter and head weights, keyed by their path in the HF model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from peftkit.artifacts.names import ADAPTER_CONFIG, WEIGHTS
from peftkit.errors import PeftkitError
from peftkit.methods._own import (
    DEFAULT_ADAPTER,
    find_module,
    head_params,
    head_tensors,
    read_weights,
    set_head,
)
from peftkit.methods.base import MethodContext, MethodOptions, MethodSpec

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
# model_type -> (attention-output Linear, MLP-output Linear), as regexes over the full module name.
_DECODER = (r"(.*\.)?self_attn\.o_proj", r"(.*\.)?mlp\.down_proj")
_ENCODER = (r"(.*\.)?layer\.\d+\.attention\.output\.dense", r"(.*\.)?layer\.\d+\.output\.dense")
_DEFAULT_TARGETS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"), _DECODER),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2"), _ENCODER),
}


class BottleneckOptions(MethodOptions):
    name: Literal["bottleneck"] = "bottleneck"
    bottleneck_dim: int = Field(
        64, gt=0, description="adapter width m; wider: more capacity, 2*m*d params each"
    )
    placement: Literal["houlsby", "pfeiffer"] = Field(
        "pfeiffer",
        description="houlsby: after attention and MLP (2 adapters a layer); pfeiffer: after the MLP only (half "
        "the parameters and added latency, usually about the same accuracy)",
    )
    non_linearity: Literal["relu", "gelu", "silu"] = Field(
        "relu", description="activation inside the adapter; relu is the cheap classic, gelu/silu are smoother"
    )
    target_modules: list[str] | None = Field(
        None,
        description="names, name suffixes or regexes of the Linear layers whose output gets an adapter; "
        "overrides placement, for architectures without defaults or finer control",
    )

    @field_validator("target_modules")
    @classmethod
    def _check_patterns(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or []:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"target_modules entry {pattern!r} is not a valid regex: {e}") from e
        return patterns


class BottleneckAdapter(nn.Module):
    """``up(act(down(h)))``, the update `BottleneckLayer` adds to ``h``. ``up`` starts at zero."""

    def __init__(self, dim: int, bottleneck_dim: int, non_linearity: str = "relu"):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim)
        self.act = _ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class BottleneckLayer(nn.Module):
    """Stands in for a Linear (plain, bf16 or bitsandbytes 8-bit): ``h = base_layer(x)``, then ``h + adapter(h)``.

    Adapters live in a `nn.ModuleDict` by name; the one named by ``active_adapter`` runs (None: the bare base layer).
    The adapter computes in its own dtype (float32) and the sum is cast back to the base layer's output dtype.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None

    def add_adapter(self, name: str, bottleneck_dim: int, non_linearity: str) -> None:
        adapter = BottleneckAdapter(self.base_layer.out_features, bottleneck_dim, non_linearity)
        self.adapters[name] = adapter.to(device=self.base_layer.weight.device, dtype=torch.float32)
        self.active_adapter = name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base_layer(x, *args, **kwargs)
        if self.active_adapter is None:
            return h
        adapter = self.adapters[self.active_adapter]
        h_ad = h.to(adapter.down.weight.dtype)
        return (h_ad + adapter(h_ad)).to(h.dtype)


class BottleneckModel(nn.Module):
    """The HF model (``.model``) with bottleneck adapters inserted; what `apply` and `attach` return.

    Deliberately a plain `nn.Module`, not a `PreTrainedModel`, and without attribute forwarding: HF Trainer refuses
    to train a model that reports ``is_quantized`` (an 8-bit base) unless it is a peft model.
    """

    def __init__(self, model: nn.Module, options: BottleneckOptions, head_names, adapted_modules):
        super().__init__()
        self.model = model
        self.options = options
        self.head_names = tuple(head_names)
        self.adapted_modules = tuple(adapted_modules)
        # Several loaded adapters share the HF model's one head module: each keeps its head weights here and
        # `set_adapter` copies them in (a few KB; cheaper and simpler than wrapping the head per adapter).
        self.head_weights: dict[str, dict[str, torch.Tensor]] = {}
        self.active_adapter = DEFAULT_ADAPTER

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        # Named (not just **kwargs) because HF Trainer drops batch columns the forward signature does not name,
        # and finds the label column there: without them BERT sentence pairs and Trainer's loss silently break.
        extra = {"token_type_ids": token_type_ids, "labels": labels}
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        # What HF Trainer calls; the HF model also hooks its input embeddings so that checkpointed blocks pass
        # gradients back to the adapters although everything below them is frozen.
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)


def resolve_targets(model: nn.Module, opts: BottleneckOptions, model_type: str, head_names=()) -> list[str]:
    """Full names of the modules that get an adapter, from ``target_modules`` or the architecture's defaults."""
    if opts.target_modules:
        patterns = opts.target_modules
    elif model_type in _DEFAULT_TARGETS:
        attention, mlp = _DEFAULT_TARGETS[model_type]
        patterns = [attention, mlp] if opts.placement == "houlsby" else [mlp]
    else:
        raise PeftkitError(
            f"bottleneck has no default targets for model_type {model_type!r}: set method.target_modules to the "
            "Linear layers whose output is a sublayer output (e.g. ['o_proj', 'down_proj'])"
        )
    names = []
    for name, _ in model.named_modules():
        if name and any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns):
            if any(name == h or name.startswith(h + ".") for h in head_names):
                raise PeftkitError(f"target module {name!r} is in the task head, which trains in full anyway")
            names.append(name)
    if not names:
        raise PeftkitError(f"no module of this {model_type!r} model matches bottleneck targets {patterns}")
    return names


def _linears(model: nn.Module, names) -> dict[str, nn.Linear]:
    layers = {name: find_module(model, name, "adapted module") for name in names}
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear):
            raise PeftkitError(f"adapted module {name!r} is a {type(layer).__name__}, not a Linear layer")
    return layers


def _insert(model: nn.Module, layers: dict[str, nn.Linear], opts: BottleneckOptions, adapter: str) -> None:
    for name, layer in layers.items():
        wrapper = BottleneckLayer(layer)
        wrapper.add_adapter(adapter, opts.bottleneck_dim, opts.non_linearity)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, wrapper)


def _saved_params(model: BottleneckModel, adapter: str = DEFAULT_ADAPTER) -> dict[str, nn.Parameter]:
    """Adapter `adapter`'s parameters and the head's, keyed as in the file: by their path in the HF model, with the
    adapter always called ``default`` there (``...down_proj.adapters.default.up.bias``), whatever its name in memory.
    """
    params = {}
    for name in model.adapted_modules:
        for n, p in model.model.get_submodule(name).adapters[adapter].named_parameters():
            params[f"{name}.adapters.{DEFAULT_ADAPTER}.{n}"] = p
    params.update(head_params(model.model, model.head_names))
    return params


def apply(base: nn.Module, opts: BottleneckOptions, ctx: MethodContext) -> BottleneckModel:
    if any(isinstance(m, BottleneckLayer) for m in base.modules()):
        raise PeftkitError("this model already has bottleneck adapters")
    layers = _linears(base, resolve_targets(base, opts, ctx.model_type, ctx.head_names))
    heads = head_params(base, ctx.head_names)  # all checks done before the model is changed
    base.requires_grad_(False)
    _insert(base, layers, opts, DEFAULT_ADAPTER)
    for p in heads.values():
        p.requires_grad_(True)
    return BottleneckModel(base, opts, ctx.head_names, list(layers))


def save(model: BottleneckModel, folder: Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: p.detach().to("cpu").contiguous() for k, p in _saved_params(model, model.active_adapter).items()
    }
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = {
        "peftkit_method": "bottleneck",
        "options": model.options.model_dump(),
        "adapted_modules": list(model.adapted_modules),
        "head_names": list(model.head_names),
        "model_type": model.config.model_type,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _read_config(folder: Path) -> dict:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise PeftkitError(f"{folder} has no {ADAPTER_CONFIG}: not an adapter folder")
    config = json.loads(path.read_text())
    if config.get("peftkit_method") != "bottleneck":
        raise PeftkitError(f"{path} is not a peftkit bottleneck adapter ({config.get('peftkit_method')=})")
    return config


def _copy_weights(
    model: BottleneckModel, adapter: str, tensors: dict[str, torch.Tensor], folder: Path
) -> None:
    """Copy a saved adapter's tensors into adapter `adapter` and the head, after checking every key and shape."""
    params = _saved_params(model, adapter)
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        raise PeftkitError(
            f"{folder}: weights do not fit this base: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for key, p in params.items():
        if tensors[key].shape != p.shape:
            shapes = f"{tuple(tensors[key].shape)} in the file, {tuple(p.shape)} in this base"
            raise PeftkitError(f"{folder}: {key} has shape {shapes} (a different model size?)")
    with torch.no_grad():
        for key, p in params.items():
            p.copy_(tensors[key])


def attach(base: nn.Module, folder: Path, name: str = DEFAULT_ADAPTER) -> BottleneckModel:
    folder = Path(folder)
    tensors = read_weights(folder)
    config = _read_config(folder)
    opts = BottleneckOptions.model_validate(config["options"])
    if (base_type := getattr(base.config, "model_type", None)) != config["model_type"]:
        raise PeftkitError(
            f"{folder} was trained on a {config['model_type']!r} model, this base is {base_type!r}"
        )
    layers = _linears(base, config["adapted_modules"])
    head_params(base, config["head_names"])  # all checks done before the model is changed
    _insert(base, layers, opts, name)
    model = BottleneckModel(base, opts, config["head_names"], config["adapted_modules"])
    model.active_adapter = name
    _copy_weights(model, name, tensors, folder)
    model.head_weights[name] = head_tensors(model.model, model.head_names)
    model.requires_grad_(False)
    return model.eval()


def load_adapter(model: BottleneckModel, folder: Path, name: str) -> None:
    """Add the adapter in `folder` under `name`, beside those already loaded; the active one does not change."""
    folder = Path(folder)
    tensors = read_weights(folder)
    config = _read_config(folder)
    if (
        tuple(config["adapted_modules"]) != model.adapted_modules
        or tuple(config["head_names"]) != model.head_names
    ):
        raise PeftkitError(
            f"{folder} adapts other modules than the adapters already loaded; a bank needs one placement"
        )
    if name in model.head_weights:
        raise PeftkitError(f"an adapter named {name!r} is already loaded")
    opts = BottleneckOptions.model_validate(config["options"])
    layers = [model.model.get_submodule(m) for m in model.adapted_modules]
    active_head = head_tensors(model.model, model.head_names)
    for layer in layers:
        layer.adapters[name] = BottleneckAdapter(
            layer.base_layer.out_features, opts.bottleneck_dim, opts.non_linearity
        ).to(device=layer.base_layer.weight.device, dtype=torch.float32)
    try:
        _copy_weights(model, name, tensors, folder)  # also writes the head: restored below
        model.head_weights[name] = head_tensors(model.model, model.head_names)
    except PeftkitError:
        for layer in layers:
            del layer.adapters[name]
        raise
    finally:
        set_head(model.model, model.head_names, active_head)
    model.requires_grad_(False)


def set_adapter(model: BottleneckModel, name: str) -> None:
    if name not in model.head_weights:
        raise PeftkitError(f"no adapter named {name!r} is loaded (loaded: {', '.join(model.head_weights)})")
    for module in model.adapted_modules:
        model.model.get_submodule(module).active_adapter = name
    set_head(model.model, model.head_names, model.head_weights[name])
    model.active_adapter = name


def delete_adapter(model: BottleneckModel, name: str) -> None:
    if name == model.active_adapter:
        others = [n for n in model.head_weights if n != name]
        if not others:
            raise PeftkitError(f"adapter {name!r} is the only one loaded; load another before deleting it")
        set_adapter(model, others[0])
    for module in model.adapted_modules:
        del model.model.get_submodule(module).adapters[name]
    del model.head_weights[name]


def warm_start(model: BottleneckModel, folder: Path) -> None:
    """Start the freshly applied adapter and head from a saved adapter with the same placement and width."""
    folder = Path(folder)
    _copy_weights(model, model.active_adapter, read_weights(folder), folder)


def describe(folder: Path) -> dict:
    config = _read_config(Path(folder))
    opts = config["options"]
    return {
        "placement": "custom" if opts.get("target_modules") else opts["placement"],
        "bottleneck_dim": opts["bottleneck_dim"],
        "non_linearity": opts["non_linearity"],
        "adapted_modules": len(config["adapted_modules"]),
    }


SPEC = MethodSpec(
    name="bottleneck",
    summary="small down-project / up-project MLPs after attention and/or MLP blocks (peftkit's own)",
    options=BottleneckOptions,
    default_lr=1e-3,
    peft_native=False,
    apply=apply,
    attach=attach,
    save=save,
    describe=describe,
    load_adapter=load_adapter,
    set_adapter=set_adapter,
    delete_adapter=delete_adapter,
    warm_start=warm_start,
)
