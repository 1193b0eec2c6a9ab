"""The LoRA export: the adapter as plain peft LoRA (``adapter_config.json`` + ``adapter_model.safetensors``), in the
key layout plain peft, vLLM and LoRAX read, without the task head."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.artifacts.manifest import Manifest
from peftkit.artifacts.names import ADAPTER_CONFIG, WEIGHTS
from peftkit.errors import PeftkitError
from peftkit.export.architecture import causal_lm_layout
from peftkit.export.checks import ToLora
from peftkit.export.record import LoraSection

if TYPE_CHECKING:
    from peftkit.models import BaseRef

# peft's key prefix for a PeftModel's wrapped transformers model: `base_model.model.<module path>...`
PEFT_PREFIX = "base_model.model."


def split_head(weights: dict, head_names: list[str]) -> tuple[dict, dict]:
    """(adapter tensors, head tensors keyed by their path in the model: ``score.weight``)."""
    adapter, head = {}, {}
    for key, tensor in weights.items():
        path = key.removeprefix(PEFT_PREFIX)
        if path.split(".", 1)[0] in head_names:
            head[path] = tensor
        else:
            adapter[key] = tensor
    return adapter, head


def module_path(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return re.sub(r"\.lora_[ABE](\.weight)?$", "", key).removeprefix(PEFT_PREFIX)


def write_lora(
    folder: Path, manifest: Manifest, tmp: Path, to: str, ref: BaseRef | None, to_lora: ToLora
) -> LoraSection:
    """Write the adapter, as its method's `to_lora` turns it into plain LoRA, into `tmp`; returns its record."""
    from safetensors.torch import load_file, save_file

    source_cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    tensors, _ = split_head(load_file(str(folder / WEIGHTS)), manifest.head_names)
    lora_cfg, lora = to_lora(source_cfg, tensors)
    _check_plain(lora, folder)
    if to == "vllm":
        _check_one_scale(lora_cfg, folder)
    if not lora:
        raise PeftkitError(
            f"adapter {folder}: every adapted module was pruned to rank 0; there is nothing to export"
        )
    ranks = {module_path(k): int(t.shape[0]) for k, t in lora.items() if k.endswith(".lora_A.weight")}
    paths = sorted({module_path(k) for k in lora})
    layout = {"causal_lm_architecture": causal_lm_layout(ref, paths)} if to == "vllm" else {}
    config = _lora_config(lora_cfg, to, ref)
    config.save_pretrained(str(tmp))
    # peft's own key layout: `base_model.model.<module path>.lora_A.weight`, which plain peft, vLLM and LoRAX read.
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return LoraSection(
        task_type=config.task_type,
        r=config.r,
        lora_alpha=config.lora_alpha,
        target_modules=config.target_modules
        if isinstance(config.target_modules, str)
        else sorted(config.target_modules),
        modules=len(paths),
        max_rank=max(ranks.values()),
        ranks=ranks,
        **lora_cfg.get("export_facts", {}),
        **layout,
    )


def _check_plain(tensors: dict, folder: Path) -> None:
    """Refuse tensors plain LoRA has no place for."""
    odd = [k for k in tensors if not re.search(r"\.lora_[AB]\.weight$", k)]
    # DoRA magnitudes, LoRA biases, embedding LoRA: not plain LoRA, and vLLM would refuse or misread them.
    if odd:
        raise PeftkitError(
            f"adapter {folder} holds {len(odd)} tensor(s) plain LoRA has no place for (first: {odd[0]}); "
            "export supports LoRA without DoRA or biases"
        )


def _check_one_scale(cfg: dict, folder: Path) -> None:
    """Refuse, for vLLM, a LoRA whose rank/alpha patterns give some module another scale than ``lora_alpha / r``.

    vLLM applies the global scale to every module (and takes each module's rank from its tensors), so patterns
    are harmless only where they keep that scale, as the AdaLoRA conversion's ``r = lora_alpha = k`` entries do.
    """
    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    power = 0.5 if cfg.get("use_rslora") else 1.0

    def scale(key: str | None) -> float:
        return alphas.get(key, cfg["lora_alpha"]) / ranks.get(key, cfg["r"]) ** power

    if any(scale(key) != scale(None) for key in {*ranks, *alphas}):
        raise PeftkitError(
            f"--to vllm: adapter {folder} sets rank_pattern/alpha_pattern in adapter_config.json, which vLLM "
            "ignores (it applies one lora_alpha/r to every module); use --to peft-lora"
        )


def _lora_config(cfg: dict, to: str, ref: BaseRef | None):
    """The exported adapter_config.json: the method's LoRA config as a peft LoraConfig without modules_to_save."""
    from peft import LoraConfig

    return LoraConfig(
        # vLLM serves generation models; peft-lora leaves the task unset so peft wraps any model with this layout
        # without adding a classification head (SEQ_CLS would re-add `score`/`classifier` as modules_to_save).
        task_type="CAUSAL_LM" if to == "vllm" else None,
        base_model_name_or_path=str(ref.folder) if ref is not None else cfg.get("base_model_name_or_path"),
        r=cfg["r"],
        lora_alpha=cfg["lora_alpha"],
        # Same targets as training, so the same modules match (a conversion excludes the ones it dropped).
        target_modules=cfg["target_modules"],
        exclude_modules=cfg.get("exclude_modules"),
        rank_pattern=cfg.get("rank_pattern") or {},
        alpha_pattern=cfg.get("alpha_pattern") or {},
        layers_to_transform=cfg.get("layers_to_transform"),
        layers_pattern=cfg.get("layers_pattern"),
        lora_dropout=cfg.get("lora_dropout", 0.0),
        fan_in_fan_out=cfg.get("fan_in_fan_out", False),
        use_rslora=cfg.get("use_rslora", False),
        bias="none",
        modules_to_save=None,
        inference_mode=True,
    )
