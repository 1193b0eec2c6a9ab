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
classification heads, so the head travels beside the adapter and the README says how to apply it. Each method's
``MethodSpec.to_lora`` gives its plain-LoRA form (AdaLoRA is converted exactly, see
`peftkit.methods.adalora.to_lora`); prefix tuning and bottleneck adapters have none and are refused.

One module per part: `checks` (refusals before writing), `architecture` (decoder / causal-LM layout), `lora`,
`head`, `merged` (the files), `readme` (notes and README.md), `record` (``export.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from peftkit.artifacts.io import atomic_folder, write_json, write_text_atomic
from peftkit.artifacts.manifest import BaseIdentity, Manifest, package_versions, read_manifest
from peftkit.artifacts.names import CARD, EXPORT_MANIFEST
from peftkit.errors import PeftkitError
from peftkit.export.architecture import check_decoder
from peftkit.export.checks import check_merge, check_output, lora_form
from peftkit.export.head import write_head
from peftkit.export.lora import write_lora
from peftkit.export.merged import write_merged
from peftkit.export.readme import export_notes, readme
from peftkit.export.record import FORMAT_VERSION, ExportRecord, ExportSource
from peftkit.models import resolve_adapter_base

log = logging.getLogger("peftkit")

TARGETS = ("vllm", "peft-lora")


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
    to_lora = lora_form(manifest, folder)
    if merge:
        check_merge(manifest, folder)
    check_output(out, folder, overwrite)
    ref = resolve_adapter_base(manifest, folder, base, "--base") if (merge or to == "vllm") else None
    if to == "vllm":
        check_decoder(ref)

    record = _record(manifest, folder, to, merge)
    with atomic_folder(out) as tmp:
        if merge:
            record.merged_model = write_merged(folder, manifest, tmp, base)
        else:
            record.lora = write_lora(folder, manifest, tmp, to, ref, to_lora)
            record.head = write_head(folder, manifest, tmp)
        record.notes = export_notes(record, manifest)
        record.files = sorted([p.name for p in tmp.iterdir() if p.is_file()] + [EXPORT_MANIFEST, CARD])
        write_json(tmp / EXPORT_MANIFEST, record.to_json())
        write_text_atomic(tmp / CARD, readme(record, manifest, out, ref))
    for note in record.notes:
        log.warning("warning: %s", note)
    return {"output": str(out), **record.to_json()}


def _record(manifest: Manifest, folder: Path, to: str, merge: bool) -> ExportRecord:
    """The export's record before anything is written: where it comes from, with which versions."""
    versions = package_versions()
    return ExportRecord(
        format_version=FORMAT_VERSION,
        target=to,
        merged=merge,
        source=ExportSource(
            adapter=str(folder.resolve()),
            method=manifest.method,
            task=manifest.task,
            labels=manifest.labels,
            base=BaseIdentity(name=manifest.base.name, sha256=manifest.base.sha256),
            quant=manifest.quant,
        ),
        peftkit_version=versions.get(
            "peftkit", "unknown"
        ),  # "unknown": run from a checkout not pip-installed
        versions=versions,
    )
