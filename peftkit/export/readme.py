"""What an export tells people: the notes (also printed as warnings) and the export's ``README.md``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.artifacts.manifest import Manifest
from peftkit.artifacts.names import HEAD_INFO, HEAD_WEIGHTS
from peftkit.export.head import DECODE, head_text
from peftkit.export.record import ExportRecord, LoraSection

if TYPE_CHECKING:
    from peftkit.models import BaseRef


def export_notes(record: ExportRecord, manifest: Manifest) -> list[str]:
    """What the user must know before serving the export; also printed as warnings."""
    notes = []
    heads = "/".join(manifest.head_names)
    if not record.merged:
        what = (
            "and vLLM cannot serve it; serve with peftkit or apply it yourself"
            if record.target == "vllm"
            else "so load it into the model's head yourself or serve with peftkit"
        )
        notes.append(
            f"the export carries the adapted transformer layers only: the {manifest.task} head ({heads}) is in "
            f"{HEAD_WEIGHTS}, not in the LoRA, {what} (see README.md)"
        )
        if manifest.quant == "8bit":
            notes.append(
                "the adapter was trained on an 8-bit base; on a full-precision base its outputs differ slightly"
            )
        dropped = record.lora.dropped_modules
        if dropped:
            notes.append(f"{len(dropped)} module(s) AdaLoRA pruned to rank 0 were dropped (they add nothing)")
    return notes


def readme(record: ExportRecord, manifest: Manifest, out: Path, ref: BaseRef | None) -> str:
    """The export's README.md: what it holds, what it does not, and how to serve or load it."""
    src = record.source
    intro = f"""# {out.name}

Exported by `peftkit export --to {record.target}{" --merge" if record.merged else ""}` from the
**{src.method}** adapter `{src.adapter}` ({src.task}; labels: {", ".join(src.labels or []) or "-"}).
Base: `{src.base.name}` (weights sha256 `{src.base.sha256[:16]}…`), trained with quantisation
{src.quant}. `export.json` records the details.
"""
    if record.merged:
        return intro + _merged(record, out)
    lora = record.lora
    base_folder = str(ref.folder) if ref is not None else manifest.base.name
    text = intro + _lora_contents(lora, manifest) + _adalora(lora)
    if record.target == "vllm":
        return text + _serve_vllm(lora, base_folder, out)
    return text + _load_with_peft(manifest, base_folder, out)


def _merged(record: ExportRecord, out: Path) -> str:
    m = record.merged_model
    return f"""
## What is here

The base model with the adapter merged into its weights and the task head included: a plain transformers
`{m.architecture}` ({m.dtype}, {m.num_outputs} outputs) with its tokenizer. No peft needed:

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```

Its logits equal the adapter's (`peftkit.load`) up to float rounding. Decode them: {DECODE[record.source.task]}
(labels in order: {", ".join(record.source.labels or []) or "-"}).
{_VLLM_MERGED if record.target == "vllm" else ""}"""


_VLLM_MERGED = """
For vLLM this is a `*ForSequenceClassification` checkpoint, not a LoRA: whether a given vLLM version serves it
(through its pooling / classify runner) depends on that version's supported-model list; peftkit does not test it.
"""


def _lora_contents(lora: LoraSection, manifest: Manifest) -> str:
    return f"""
## What is here, and what is not

- `adapter_config.json`, `adapter_model.safetensors`: a plain peft LoRA ({lora.modules} modules, ranks up to
  {lora.max_rank}) over the transformer layers, without `modules_to_save`.
- `{HEAD_WEIGHTS}` + `{HEAD_INFO}`: the **{manifest.task} head** ({", ".join(manifest.head_names)}), which is
  *not* part of the LoRA. vLLM and LoRAX serve generation and cannot run it.

To get the classifier's answers, either

1. serve with peftkit (`peftkit predict` / `peftkit.load` for this adapter, `peftkit serve` for an adapter bank), or
2. apply the head yourself: {head_text(manifest)}
"""


def _adalora(lora: LoraSection) -> str:
    """How the AdaLoRA update was folded into LoRA, for exports converted from AdaLoRA; else nothing."""
    a = lora.adalora
    if a is None:
        return ""
    return f"""
## AdaLoRA, converted

AdaLoRA's update per module, `ΔW = lora_B @ (lora_A * lora_E) * {a.lora_alpha} / ({a.init_r} + 1e-5)`, is
stored here as LoRA with `A = lora_A * lora_E * {a.folded_scale:.6g}`, `B = lora_B` and `lora_alpha = r = k` per
module (k = the allocated rank, in `rank_pattern`/`alpha_pattern`; the global `r = lora_alpha = {lora.r}` keeps
the scale at 1 for runtimes that read only those), so the update is the same. Ranks per module are in
`export.json`; {len(lora.dropped_modules or [])} module(s) pruned to rank 0 were dropped (`exclude_modules`).
"""


def _serve_vllm(lora: LoraSection, base_folder: str, out: Path) -> str:
    return f"""
## Serve with vLLM

Module paths were checked against `{lora.causal_lm_architecture}`: each adapted module of the classifier
(such as `{next(iter(lora.ranks))}`) sits at the same path in the causal LM, so vLLM applies every LoRA module.

```
vllm serve {base_folder} --enable-lora --max-lora-rank {_vllm_rank(lora.max_rank)} \\
    --lora-modules {out.name}={out}
```

vLLM serves text generation: requests naming this LoRA run the adapted transformer layers, then the base's
language-model head. **They do not return the classifier's answers.**
"""


def _load_with_peft(manifest: Manifest, base_folder: str, out: Path) -> str:
    return f"""
## Load with plain peft

```python
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained("{base_folder}", num_labels={manifest.num_outputs})
model = PeftModel.from_pretrained(base, "{out}")  # then load {HEAD_WEIGHTS} into the head
```

Keys are module paths in the `*ForSequenceClassification` model (for decoders, the same paths as in `*ForCausalLM`).
"""


def _vllm_rank(rank: int) -> int:
    """vLLM's --max-lora-rank takes a fixed set of sizes: the smallest power of two from 8 that holds `rank`."""
    size = 8
    while size < rank:
        size *= 2
    return size
