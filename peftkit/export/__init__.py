"""Export an adapter for other runtimes: plain PEFT LoRA (vLLM, LoRAX, peft) or a merged transformers model.

    peftkit export --adapter runs/intent-adalora --to vllm --output exports/intent-vllm

LoRA exports (``--to vllm`` / ``--to peft-lora``) write:

    exports/intent-vllm/
      adapter_config.json         peft LoraConfig, peft_type LORA, no modules_to_save
      adapter_model.safetensors   lora_A / lora_B weights only, keyed as peft saves them
      head.safetensors            the task head (score / classifier) the runtime cannot serve
      head.json                   what the head is: task, labels in order, what it applies to, how to decode
      export.json                 where it came from: adapter, base name + sha256, method, target, ranks
      README.md                   what is (and is not) in the export, how to serve it

``--merge`` writes the base with the adapter merged in (head included) as a transformers folder instead.

LoRA exports carry the adapted transformer layers only: vLLM and LoRAX serve generation, not sequence
classification heads, so the head travels beside the adapter and the README says how to apply it. AdaLoRA is
converted to plain LoRA exactly (see `adalora_to_lora`); prefix tuning and bottleneck adapters have no LoRA form.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from peftkit.artifacts.io import atomic_folder, write_json
from peftkit.artifacts.manifest import package_versions, read_manifest
from peftkit.artifacts.names import WEIGHTS
from peftkit.errors import PeftkitError

log = logging.getLogger("peftkit")

TARGETS = ("vllm", "peft-lora")
EXPORT_MANIFEST = "export.json"
HEAD_WEIGHTS = "head.safetensors"
HEAD_INFO = "head.json"
CONFIG_NAME = "adapter_config.json"
# peft's key prefix for a PeftModel's wrapped transformers model: `base_model.model.<module path>...`
PEFT_PREFIX = "base_model.model."

# Why a method has no plain-LoRA form; the refusal names it.
_NOT_LORA = {
    "prefix": "prefix tuning adds trained virtual key/value tokens to every attention layer, not a weight update, "
    "and vLLM/LoRAX serve LoRA adapters only",
    "bottleneck": "bottleneck adapters insert new layers (down/up projections with a non-linearity) after "
    "sublayers; no weight update B@A equals them",
    "full": "it is already a whole fine-tuned model (every weight trained); serve its folder as a model, not an "
    "adapter",
}


def export_adapter(
    adapter: str | Path,
    to: str,
    output: str | Path,
    *,
    merge: bool = False,
    overwrite: bool = False,
    base: str | None = None,
) -> dict[str, Any]:
    """Export a trained adapter folder for another runtime; returns the summary also written to ``export.json``.

    Args:
        adapter: folder written by ``peftkit train`` (lora or adalora; prefix and bottleneck are refused).
        to: ``"vllm"`` (decoder bases only: task_type CAUSAL_LM, module paths checked against the base's
            causal-LM layout) or ``"peft-lora"`` (any base; task_type left unset, so peft adds no head).
        output: folder to create; written under a temporary name beside it and renamed when complete.
        merge: write the base with the adapter merged in (task head included) as a transformers folder with its
            tokenizer, loadable with ``AutoModelForSequenceClassification.from_pretrained``. Refused for adapters
            trained on an 8-bit base.
        overwrite: replace a non-empty ``output``; without it such a folder is refused.
        base: base model (alias, folder or .gguf) when the manifest's is not available here; its weights must
            hash to the manifest's sha256. Only needed for ``to="vllm"`` and ``merge``.

    Raises:
        PeftkitError: the method, base, quantisation or output folder rules the export out; the message says why.
    """
    folder, out = Path(adapter), Path(output)
    if to not in TARGETS:
        raise PeftkitError(f"--to {to!r}: use one of {', '.join(TARGETS)}")
    manifest = read_manifest(folder)
    method = manifest["method"]
    if method in _NOT_LORA:
        raise PeftkitError(
            f"adapter {folder} is a {method} adapter and cannot be exported: {_NOT_LORA[method]}"
        )
    if method not in ("lora", "adalora"):
        raise PeftkitError(f"adapter {folder}: method {method!r} has no export; lora and adalora do")
    if merge and manifest["quant"] == "8bit":
        raise PeftkitError(
            f"--merge: adapter {folder} was trained on an 8-bit (LLM.int8) base, whose int8 weights cannot take "
            "a merged update without re-quantising it; export without --merge (LoRA weights) instead"
        )
    _check_output(out, folder, overwrite)
    ref = _resolve_base(manifest, folder, base) if (merge or to == "vllm") else None
    if to == "vllm":
        _check_decoder(ref)

    summary: dict[str, Any] = {
        "format_version": 1,
        "target": to,
        "merged": merge,
        "source": {
            "adapter": str(folder.resolve()),
            "method": method,
            "task": manifest["task"],
            "labels": manifest.get("labels"),
            "base": {k: manifest["base"][k] for k in ("name", "sha256") if k in manifest["base"]},
            "quant": manifest["quant"],
        },
        "peftkit_version": _peftkit_version(),
        "versions": package_versions(),
    }
    with atomic_folder(out) as tmp:
        if merge:
            summary["merged_model"] = _write_merged(folder, manifest, tmp, base)
        else:
            summary["lora"] = _write_lora(folder, manifest, tmp, to, ref)
            summary["head"] = _write_head(folder, manifest, tmp)
        summary["notes"] = _notes(summary, manifest)
        summary["files"] = sorted(
            [p.name for p in tmp.iterdir() if p.is_file()] + [EXPORT_MANIFEST, "README.md"]
        )
        write_json(tmp / EXPORT_MANIFEST, summary)
        (tmp / "README.md").write_text(_readme(summary, manifest, out, ref), encoding="utf-8")
    for note in summary["notes"]:
        log.warning("warning: %s", note)
    return {"output": str(out), **summary}


def _peftkit_version() -> str:
    from peftkit import __version__

    return __version__


# --- checks ---------------------------------------------------------------------------------------------------


def _check_output(out: Path, adapter: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PeftkitError(f"--output {out} is a file; choose a folder path")
    if out.resolve() == adapter.resolve() or adapter.resolve() in out.resolve().parents:
        raise PeftkitError(f"--output {out} is inside the adapter folder {adapter}; choose another --output")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"--output {out} exists and is not empty; pass --overwrite to replace it or choose another --output"
        )


def _resolve_base(manifest: dict[str, Any], folder: Path, base: str | None):
    from peftkit.models import resolve_adapter_base

    return resolve_adapter_base(manifest, folder, base, "--base")


def is_decoder(model_type: str) -> bool:
    """A decoder-only (causal LM) architecture, the kind vLLM serves LoRA on.

    transformers lists BERT-style encoders under causal LM too (``BertLMHeadModel``), so a model type that also has
    a masked-LM class does not count; neither do encoder-decoders (BART and kin have both classes as well).
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def _check_decoder(ref) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(ref.folder))
    if not is_decoder(config.model_type):
        raise PeftkitError(
            f"--to vllm: base {ref.name} is a {config.model_type} encoder; vLLM serves LoRA adapters on decoder "
            "(causal LM) models only; use --to peft-lora for a plain peft LoRA"
        )


def causal_lm_layout(ref, module_paths: list[str]) -> str:
    """Check that every adapted module sits at the same path in the base's causal-LM class; returns its name.

    peft keys LoRA weights by the module path inside the model it wrapped: here the sequence classifier
    (``LlamaForSequenceClassification.model.layers.0.self_attn.q_proj``). vLLM applies them to the causal LM
    (``LlamaForCausalLM.model.layers.0...``). Built on the meta device: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(ref.folder))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    modules = dict(lm.named_modules())
    missing = [p for p in module_paths if not isinstance(modules.get(p), torch.nn.Linear)]
    if missing:
        raise PeftkitError(
            f"--to vllm: {len(missing)} adapted module(s) have no Linear at the same path in "
            f"{type(lm).__name__} (first: {missing[0]}), so vLLM would not apply them; use --to peft-lora"
        )
    return type(lm).__name__


# --- LoRA export ------------------------------------------------------------------------------------------------


def _split_head(weights: dict, head_names: list[str]) -> tuple[dict, dict]:
    """(adapter tensors, head tensors keyed by their path in the model: ``score.weight``)."""
    adapter, head = {}, {}
    for key, tensor in weights.items():
        path = key.removeprefix(PEFT_PREFIX)
        if path.split(".", 1)[0] in head_names:
            head[path] = tensor
        else:
            adapter[key] = tensor
    return adapter, head


def _write_lora(folder: Path, manifest: dict[str, Any], tmp: Path, to: str, ref) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    source_cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    tensors, _ = _split_head(load_file(str(folder / WEIGHTS)), manifest["head_names"])
    if manifest["method"] == "adalora":
        lora, facts = adalora_to_lora(source_cfg, tensors)
    else:
        lora, facts = _plain_lora(source_cfg, tensors, folder, to)
    if not lora:
        raise PeftkitError(
            f"adapter {folder}: every adapted module was pruned to rank 0; there is nothing to export"
        )
    paths = sorted({_module_path(k) for k in lora})
    if to == "vllm":
        facts["causal_lm_architecture"] = causal_lm_layout(ref, paths)
    config = _lora_config(source_cfg, facts, to, ref)
    config.save_pretrained(str(tmp))
    # peft's own key layout: `base_model.model.<module path>.lora_A.weight`, which plain peft, vLLM and LoRAX read.
    save_file({k: v.contiguous() for k, v in lora.items()}, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return {
        "task_type": config.task_type,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": sorted(config.target_modules)
        if not isinstance(config.target_modules, str)
        else config.target_modules,
        "modules": len(paths),
        "max_rank": max(facts["ranks"].values()),
        **facts,
    }


def _module_path(key: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    return re.sub(r"\.lora_[ABE](\.weight)?$", "", key).removeprefix(PEFT_PREFIX)


def _plain_lora(cfg: dict, tensors: dict, folder: Path, to: str) -> tuple[dict, dict]:
    """A peft LoRA adapter minus its head: the tensors are copied unchanged."""
    odd = [k for k in tensors if not re.search(r"\.lora_[AB]\.weight$", k)]
    # DoRA magnitudes, LoRA biases, embedding LoRA: not plain LoRA, and vLLM would refuse or misread them.
    if odd:
        raise PeftkitError(
            f"adapter {folder} holds {len(odd)} tensor(s) plain LoRA has no place for (first: {odd[0]}); "
            "export supports LoRA without DoRA or biases"
        )
    if to == "vllm" and (cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        raise PeftkitError(
            f"--to vllm: adapter {folder} sets rank_pattern/alpha_pattern in adapter_config.json, which vLLM "
            "ignores (it applies one lora_alpha/r to every module); use --to peft-lora"
        )
    ranks = {_module_path(k): int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_A.weight")}
    return tensors, {"ranks": ranks}


def adalora_to_lora(cfg: dict, tensors: dict) -> tuple[dict, dict]:
    """Convert AdaLoRA weights (as saved by peft) to plain LoRA weights with the same update, exactly.

    peft's AdaLoRA ``SVDLinear`` adds ``ΔW = lora_B @ (lora_A * lora_E) * scaling / (ranknum + 1e-5)`` with
    ``lora_A`` (k, d_in), ``lora_E`` (k, 1) the singular values, ``lora_B`` (d_out, k), ``scaling = lora_alpha``
    (``init_r`` when alpha <= 0), and ``ranknum = init_r``: peft saves each module cut to its allocated rank k
    (``rank_pattern``) and, on load, keeps ``ranknum`` at ``init_r``. Plain LoRA adds ``(alpha_k / r_k) * B @ A``,
    so with ``A = lora_A * lora_E * scaling / (init_r + 1e-5)``, ``B = lora_B`` and ``alpha_k = r_k = k`` the two
    are the same. Ranks differ per module, so every module gets its own ``rank_pattern``/``alpha_pattern`` entry;
    the global ``r = lora_alpha = max k`` keeps vLLM, which applies one ``lora_alpha / r`` to all modules, at
    scale 1 too. Modules pruned to rank 0 add nothing and are dropped.

    Returns:
        (LoRA tensors keyed ``base_model.model.<path>.lora_{A,B}.weight``, facts: ranks per module path, the
        dropped paths and the folded scale).
    """
    init_r = int(cfg["init_r"])
    scaling = cfg["lora_alpha"] if cfg["lora_alpha"] > 0 else float(init_r)
    scale = scaling / (init_r + 1e-5)
    pattern = {_module_path(k): sum(v) for k, v in (cfg.get("rank_pattern") or {}).items()}
    odd = [k for k in tensors if not re.search(r"\.lora_[ABE]$", k)]
    if odd:
        raise PeftkitError(f"AdaLoRA weights hold {len(odd)} unexpected tensor(s) (first: {odd[0]})")
    out, ranks, dropped = {}, {}, []
    for key in sorted(k for k in tensors if k.endswith(".lora_A")):
        stem = key.removesuffix(".lora_A")
        a, e, b = tensors[key], tensors[f"{stem}.lora_E"], tensors[f"{stem}.lora_B"]
        path, k = _module_path(key), a.shape[0]
        if path in pattern and pattern[path] != k:
            raise PeftkitError(
                f"AdaLoRA weights of {path} have rank {k} but rank_pattern allocates {pattern[path]}; "
                "the adapter folder is inconsistent"
            )
        if k == 0:
            dropped.append(path)
            continue
        # float64 for the product, then back to the saved dtype: one rounding, as peft's own forward has.
        folded = (a.double() * e.double() * scale).to(a.dtype)
        out[f"{stem}.lora_A.weight"] = folded
        out[f"{stem}.lora_B.weight"] = b.clone()
        ranks[path] = int(k)
    return out, {
        "ranks": ranks,
        "dropped_modules": dropped,
        "adalora": {"init_r": init_r, "lora_alpha": cfg["lora_alpha"], "folded_scale": scale},
    }


def _lora_config(source: dict, facts: dict, to: str, ref):
    """The exported adapter_config.json: a peft LoraConfig without modules_to_save."""
    from peft import LoraConfig

    ranks = facts["ranks"]
    converted = "adalora" in facts
    top = max(ranks.values())
    return LoraConfig(
        # vLLM serves generation models; peft-lora leaves the task unset so peft wraps any model with this layout
        # without adding a classification head (SEQ_CLS would re-add `score`/`classifier` as modules_to_save).
        task_type="CAUSAL_LM" if to == "vllm" else None,
        base_model_name_or_path=str(ref.folder) if ref is not None else source.get("base_model_name_or_path"),
        r=top if converted else source["r"],
        lora_alpha=top if converted else source["lora_alpha"],
        # Same targets as training, so the same modules match; the ones AdaLoRA pruned away are excluded.
        target_modules=source["target_modules"],
        exclude_modules=facts.get("dropped_modules") or source.get("exclude_modules"),
        rank_pattern=dict(ranks) if converted else source.get("rank_pattern") or {},
        alpha_pattern=dict(ranks) if converted else source.get("alpha_pattern") or {},
        layers_to_transform=source.get("layers_to_transform"),
        layers_pattern=source.get("layers_pattern"),
        lora_dropout=source.get("lora_dropout", 0.0),
        fan_in_fan_out=source.get("fan_in_fan_out", False),
        use_rslora=False if converted else source.get("use_rslora", False),
        bias="none",
        modules_to_save=None,
        inference_mode=True,
    )


def _write_head(folder: Path, manifest: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The task head beside the LoRA export, with what a user needs to apply it by hand."""
    from safetensors.torch import load_file, save_file

    _, head = _split_head(load_file(str(folder / WEIGHTS)), manifest["head_names"])
    info = {
        "task": manifest["task"],
        "labels": manifest.get("labels"),
        "num_outputs": manifest["num_outputs"],
        "modules": manifest["head_names"],
        "tensors": {k: list(v.shape) for k, v in sorted(head.items())},
        "applies_to": _head_input(manifest),
        "decode": _DECODE[manifest["task"]],
        "base": {k: manifest["base"][k] for k in ("name", "sha256") if k in manifest["base"]},
    }
    save_file(
        {k: v.contiguous() for k, v in head.items()},
        str(tmp / HEAD_WEIGHTS),
        metadata={"task": manifest["task"], "labels": json.dumps(manifest.get("labels"), ensure_ascii=False)},
    )
    write_json(tmp / HEAD_INFO, info)
    return {"file": HEAD_WEIGHTS, "info": HEAD_INFO, "tensors": info["tensors"]}


_DECODE = {
    "classification": "logits = head(h); probabilities = softmax(logits); label = labels[argmax]",
    "ordinal": "logits = head(h), one per threshold: P(label > labels[k]) = min over j <= k of sigmoid(logits[j]); "
    "the predicted label is labels[number of thresholds with probability > 0.5]",
    "regression": "score = head(h)[0]",
}


def _head_input(manifest: dict[str, Any]) -> str:
    if is_decoder(manifest["base"].get("model_type", "")):
        return (
            "h = the final hidden state (after the model's last norm) of each text's last non-padding token, as "
            "*ForSequenceClassification computes it"
        )
    return (
        "h = what *ForSequenceClassification feeds its classifier; for BERT that is the pooler output "
        "tanh(pooler.dense(hidden state of [CLS])), computed with the base's own pooler weights"
    )


# --- merged export ---------------------------------------------------------------------------------------------


def _write_merged(folder: Path, manifest: dict[str, Any], tmp: Path, base: str | None) -> dict[str, Any]:
    from peftkit.inference.predictor import load_predictor

    # On the CPU in the adapter's own dtype: the merge is one matmul per module, and the result matches what
    # `peftkit.load` computes.
    predictor = load_predictor(folder, base=base, device="cpu")
    merged = predictor.model.merge_and_unload()
    labels = manifest.get("labels")
    if manifest["task"] == "classification" and labels:
        merged.config.id2label = dict(enumerate(labels))
        merged.config.label2id = {lab: i for i, lab in enumerate(labels)}
    merged.save_pretrained(str(tmp), safe_serialization=True)
    predictor.tokenizer.save_pretrained(str(tmp))
    return {
        "architecture": type(merged).__name__,
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
        "num_outputs": manifest["num_outputs"],
    }


# --- notes and README --------------------------------------------------------------------------------------------


def _notes(summary: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """What the user must know before serving the export; also printed as warnings."""
    notes = []
    heads = "/".join(manifest["head_names"])
    if not summary["merged"]:
        what = (
            "and vLLM cannot serve it; serve with peftkit or apply it yourself"
            if summary["target"] == "vllm"
            else "so load it into the model's head yourself or serve with peftkit"
        )
        notes.append(
            f"the export carries the adapted transformer layers only: the {manifest['task']} head ({heads}) is in "
            f"{HEAD_WEIGHTS}, not in the LoRA, {what} (see README.md)"
        )
        if manifest["quant"] == "8bit":
            notes.append(
                "the adapter was trained on an 8-bit base; on a full-precision base its outputs differ slightly"
            )
        dropped = summary["lora"].get("dropped_modules")
        if dropped:
            notes.append(f"{len(dropped)} module(s) AdaLoRA pruned to rank 0 were dropped (they add nothing)")
    return notes


def _readme(summary: dict[str, Any], manifest: dict[str, Any], out: Path, ref) -> str:
    src = summary["source"]
    intro = f"""# {out.name}

Exported by `peftkit export --to {summary["target"]}{" --merge" if summary["merged"] else ""}` from the
**{src["method"]}** adapter `{src["adapter"]}` ({src["task"]}; labels: {", ".join(src["labels"] or []) or "-"}).
Base: `{src["base"]["name"]}` (weights sha256 `{src["base"]["sha256"][:16]}…`), trained with quantisation
{src["quant"]}. `export.json` records the details.
"""
    if summary["merged"]:
        return intro + _readme_merged(summary, out)
    return intro + _readme_lora(summary, manifest, out, ref)


def _readme_merged(summary: dict[str, Any], out: Path) -> str:
    m = summary["merged_model"]
    return f"""
## What is here

The base model with the adapter merged into its weights and the task head included: a plain transformers
`{m["architecture"]}` ({m["dtype"]}, {m["num_outputs"]} outputs) with its tokenizer. No peft needed:

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```

Its logits equal the adapter's (`peftkit.load`) up to float rounding. Decode them: {_DECODE[summary["source"]["task"]]}
(labels in order: {", ".join(summary["source"]["labels"] or []) or "-"}).
{_VLLM_MERGED if summary["target"] == "vllm" else ""}"""


_VLLM_MERGED = """
For vLLM this is a `*ForSequenceClassification` checkpoint, not a LoRA: whether a given vLLM version serves it
(through its pooling / classify runner) depends on that version's supported-model list; peftkit does not test it.
"""


def _readme_lora(summary: dict[str, Any], manifest: dict[str, Any], out: Path, ref) -> str:
    lora = summary["lora"]
    base_folder = str(ref.folder) if ref is not None else manifest["base"]["name"]
    text = f"""
## What is here, and what is not

- `adapter_config.json`, `adapter_model.safetensors`: a plain peft LoRA ({lora["modules"]} modules, ranks up to
  {lora["max_rank"]}) over the transformer layers, without `modules_to_save`.
- `{HEAD_WEIGHTS}` + `{HEAD_INFO}`: the **{manifest["task"]} head** ({", ".join(manifest["head_names"])}), which is
  *not* part of the LoRA. vLLM and LoRAX serve generation and cannot run it.

To get the classifier's answers, either

1. serve with peftkit (`peftkit predict` / `peftkit.load` for this adapter, `peftkit serve` for an adapter bank), or
2. apply the head yourself: {_head_text(manifest)}
"""
    if "adalora" in lora:
        a = lora["adalora"]
        text += f"""
## AdaLoRA, converted

AdaLoRA's update per module, `ΔW = lora_B @ (lora_A * lora_E) * {a["lora_alpha"]} / ({a["init_r"]} + 1e-5)`, is
stored here as LoRA with `A = lora_A * lora_E * {a["folded_scale"]:.6g}`, `B = lora_B` and `lora_alpha = r = k` per
module (k = the allocated rank, in `rank_pattern`/`alpha_pattern`; the global `r = lora_alpha = {lora["r"]}` keeps
the scale at 1 for runtimes that read only those), so the update is the same. Ranks per module are in
`export.json`; {len(lora["dropped_modules"])} module(s) pruned to rank 0 were dropped (`exclude_modules`).
"""
    if summary["target"] == "vllm":
        return (
            text
            + f"""
## Serve with vLLM

Module paths were checked against `{lora["causal_lm_architecture"]}`: each adapted module of the classifier
(such as `{next(iter(lora["ranks"]))}`) sits at the same path in the causal LM, so vLLM applies every LoRA module.

```
vllm serve {base_folder} --enable-lora --max-lora-rank {_vllm_rank(lora["max_rank"])} \\
    --lora-modules {out.name}={out}
```

vLLM serves text generation: requests naming this LoRA run the adapted transformer layers, then the base's
language-model head. **They do not return the classifier's answers.**
"""
        )
    return (
        text
        + f"""
## Load with plain peft

```python
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained("{base_folder}", num_labels={manifest["num_outputs"]})
model = PeftModel.from_pretrained(base, "{out}")  # then load {HEAD_WEIGHTS} into the head
```

Keys are module paths in the `*ForSequenceClassification` model (for decoders, the same paths as in `*ForCausalLM`).
"""
    )


def _head_text(manifest: dict[str, Any]) -> str:
    """One sentence: what the head applies to, how to decode its outputs, the labels in order."""
    return (
        f"{_head_input(manifest)}; then {_DECODE[manifest['task']]} "
        f"(labels in order: {', '.join(manifest.get('labels') or []) or '-'})."
    )


def _vllm_rank(rank: int) -> int:
    """vLLM's --max-lora-rank takes a fixed set of sizes: the smallest power of two from 8 that holds `rank`."""
    size = 8
    while size < rank:
        size *= 2
    return size
