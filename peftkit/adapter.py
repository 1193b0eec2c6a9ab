"""The adapter folder: what ``peftkit train`` writes and ``peftkit.load`` reads.

    runs/intent-adalora/
      adapter_config.json         method config (peft's own for lora/adalora/prefix, so plain peft loads it)
      adapter_model.safetensors   adapter + task-head weights; safetensors only, pickle files are refused
      peftkit.json                manifest: base identity (sha256 of its weights), task, labels in order, resolved
                                  run config, eval metrics, data summary, package versions
      README.md                   model card: what it predicts, data, metrics, how to load it
      loss.png                    training loss curve

Folders are written complete under a temporary name and then renamed, so a crash never leaves half an adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

MANIFEST = "peftkit.json"
WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an adapter folder, after checking the folder is one peftkit can load."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PeftkitError(f"adapter folder {folder} does not exist")
    if not (folder / WEIGHTS).is_file():
        if (folder / "adapter_model.bin").is_file():
            raise PeftkitError(
                f"adapter {folder} holds a pickle adapter_model.bin; peftkit loads safetensors only"
            )
        raise PeftkitError(f"{folder} has no {WEIGHTS}: not an adapter folder written by peftkit train")
    if not (folder / MANIFEST).is_file():
        raise PeftkitError(f"{folder} has no {MANIFEST}: not an adapter folder written by peftkit train")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise PeftkitError(
            f"adapter {folder} was written by a newer peftkit (format {manifest['format_version']}); upgrade"
        )
    return manifest


def manifest_dtype(manifest: dict[str, Any]) -> str:
    """The base dtype an adapter trained over: the resolved ``dtype``, or for manifests written before it was
    resolved, the configured ``model.dtype`` (``auto``; `peftkit.models.stored_dtype` says what that meant)."""
    return manifest.get("dtype") or manifest["config"].get("model", {}).get("dtype", "auto")


def check_base(manifest: dict[str, Any], folder: Path, base_name: str, base_sha: str) -> None:
    """Refuse a base whose weights differ from the one the adapter was trained on (peft would load it silently)."""
    want = manifest["base"]
    if want["sha256"] != base_sha:
        raise PeftkitError(
            f"adapter {folder} was trained on base {want['name']} (sha256 {want['sha256'][:12]}) but the base given, "
            f"{base_name}, has sha256 {base_sha[:12]}; pass the matching base"
        )


def check_output(out: Path, config: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse to replace a different adapter (or any non-adapter content) unless told to."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PeftkitError(f"--output {out} is a file; choose a folder path")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise PeftkitError(
            f"--output {out} exists and is not a peftkit adapter folder; choose another --output"
        )
    if overwrite:
        return
    old = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("config", {})
    if old != config:
        diff = sorted(_diff_keys(old, config))
        raise PeftkitError(
            f"--output {out} already holds a different adapter ({', '.join(diff[:4])} differ); "
            "pass --overwrite to replace it or choose another --output"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return (
            set().union(*(_diff_keys(a.get(k), b.get(k), f"{prefix}{k}.") for k in keys)) if keys else set()
        )
    return {prefix.rstrip(".")} if a != b else set()


@contextmanager
def atomic_folder(out: Path):
    """Yield a temporary folder beside `out`; on success it replaces `out` in one rename, on failure it vanishes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` by rename, moving an existing `out` aside first and deleting it after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_base(manifest: dict[str, Any], folder: Path, base: str | None, how_to_pass: str):
    """The base an adapter attaches to: `base` if given, else its manifest's; refused when its weights differ.

    ``how_to_pass`` names the argument that overrides it (``base=``, ``--base``) for the error message.
    """
    from peftkit import models

    name = base or manifest["base"]["name"]
    try:
        ref = models.resolve(name)
    except PeftkitError as exc:
        if base is None:
            raise PeftkitError(
                f"adapter {folder}: its base {name!r} is not available here ({exc}); pass {how_to_pass}"
            ) from None
        raise
    check_base(manifest, folder, name, ref.sha256)
    return ref


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` beside `path` and rename it into place: a reader (or a kill) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("peftkit", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def adapter_size_bytes(folder: Path) -> int:
    return (folder / WEIGHTS).stat().st_size


def write_loss_curve(log_history: list[dict], path: Path, title: str) -> bool:
    """Training loss per logged step as a PNG; False when the run logged no loss."""
    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, lw=1.5)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def model_card(manifest: dict[str, Any], folder_name: str) -> str:
    """A README.md a person can read: what the adapter predicts, from what, how well, and how to load it."""
    task, labels = manifest["task"], manifest.get("labels")
    data = manifest["data"]
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in manifest["metrics"].items() if isinstance(v, float))
    what = {
        "classification": f"one of {len(labels or [])} labels: {', '.join(labels or [])}",
        "ordinal": f"an ordered label, {' < '.join(labels or [])}",
        "regression": "a numeric score",
    }[task]
    peft_line = (
        "\nWith plain peft (no peftkit):\n\n```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"base = AutoModelForSequenceClassification.from_pretrained(BASE_FOLDER, num_labels={manifest['num_outputs']})\n"
        f'model = PeftModel.from_pretrained(base, "{folder_name}")\n```\n'
        if manifest["peft_native"]
        else "\nThis is a peftkit bottleneck adapter: plain peft has no such method, load it with peftkit.\n"
    )
    synthetic = (
        "\n> **Trained and evaluated on SYNTHETIC shopper data** (peftkit data synth, docs/synthetic-data.md): the "
        "metrics below say how well the adapter recovers the generator's labels, not how it does on real shoppers.\n"
        if data.get("synthetic")
        else ""
    )
    return f"""# {folder_name}

A **{manifest["method"]}** adapter for **{task}**: predicts {what}.
{synthetic}
- base model: `{manifest["base"]["name"]}` (weights sha256 `{manifest["base"]["sha256"][:16]}…`), quantisation: {manifest["quant"]}
- trainable parameters: {manifest["trainable_params"]:,} ({manifest["trainable_percent"]:.3f}% of {manifest["total_params"]:,})
- training data: `{data["train_source"]}`, {data["train_rows"]:,} rows; evaluated on {data["eval_rows"]:,} held-out rows
  (`{data["eval_source"]}`)
- trained {manifest["train"]["steps"]} steps in {manifest["train"]["seconds"]:.0f} s
  ({manifest["train"]["samples_per_second"]:.1f} samples/s) with peftkit {manifest["versions"].get("peftkit", "?")}

## Held-out metrics

| metric | value |
|---|---|
{metrics}

## Load it

```python
import peftkit
model = peftkit.load("{folder_name}")
model.predict(["这台电脑散热很好", "房间太小了"])
```
{peft_line}
`peftkit.json` holds the full resolved training config; `loss.png` the loss curve.
"""


def save_with(
    save: Callable[[Path], None], out: Path, manifest: dict[str, Any], log_history: list[dict]
) -> None:
    """Write a complete adapter folder at `out`, atomically: weights (via `save`), manifest, card, loss curve."""
    with atomic_folder(out) as tmp:
        save(tmp)
        if not (tmp / WEIGHTS).is_file():
            raise RuntimeError(f"method {manifest['method']} wrote no {WEIGHTS}")
        manifest["adapter_bytes"] = adapter_size_bytes(tmp)
        write_json(tmp / MANIFEST, manifest)
        (tmp / "README.md").write_text(model_card(manifest, out.name), encoding="utf-8")
        write_loss_curve(log_history, tmp / "loss.png", f"{manifest['method']} on {manifest['base']['name']}")
