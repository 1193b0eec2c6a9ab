"""What a person reads in an adapter folder: the model card (README.md) and the training loss curve (loss.png)."""

from __future__ import annotations

from pathlib import Path

from peftkit.artifacts.manifest import Manifest

_WHAT = {
    "classification": lambda labels: f"one of {len(labels)} labels: {', '.join(labels)}",
    "ordinal": lambda labels: f"an ordered label, {' < '.join(labels)}",
    "regression": lambda labels: "a numeric score",
}


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


def _load_with_peft(manifest: Manifest, folder_name: str) -> str:
    if not manifest.peft_native:
        return (
            "\nThis is a peftkit bottleneck adapter: plain peft has no such method, load it with peftkit.\n"
        )
    return (
        "\nWith plain peft (no peftkit):\n\n```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"base = AutoModelForSequenceClassification.from_pretrained(BASE_FOLDER, num_labels={manifest.num_outputs})\n"
        f'model = PeftModel.from_pretrained(base, "{folder_name}")\n```\n'
    )


def _decision(manifest: Manifest) -> str:
    """How probabilities and labels come out (calibration, threshold), when training fitted them."""
    lines = []
    cal, cut = manifest.calibration, manifest.threshold
    if cal:
        lines.append(
            f"- probabilities are calibrated by temperature {cal['temperature']:.3f} (held-out ECE "
            f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, Brier {cal['brier_before']:.3f} -> "
            f"{cal['brier_after']:.3f}; `reliability.png`)"
        )
    if cut and "value" in cut:
        rates = cut["held_out"]
        lines.append(
            f"- a row is `{cut['positive']}` when its probability is at least {cut['value']:.3f} (chosen for "
            f"{cut['objective']}: held-out precision {rates['precision']:.3f}, recall {rates['recall']:.3f})"
        )
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def model_card(manifest: Manifest, folder_name: str) -> str:
    """A README.md a person can read: what the adapter predicts, from what, how well, and how to load it."""
    data, train = manifest.data, manifest.train
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in manifest.metrics.items() if isinstance(v, float))
    what = _WHAT[manifest.task](manifest.labels or [])
    synthetic = (
        "\n> **Trained and evaluated on SYNTHETIC shopper data** (peftkit data synth, docs/synthetic-data.md): the "
        "metrics below say how well the adapter recovers the generator's labels, not how it does on real shoppers.\n"
        if data.synthetic
        else ""
    )
    return f"""# {folder_name}

A **{manifest.method}** adapter for **{manifest.task}**: predicts {what}.
{synthetic}
- base model: `{manifest.base.name}` (weights sha256 `{manifest.base.sha256[:16]}…`), quantisation: {manifest.quant}
- trainable parameters: {manifest.trainable_params:,} ({manifest.trainable_percent:.3f}% of {manifest.total_params:,})
- training data: `{data.train_source}`, {data.train_rows:,} rows; evaluated on {data.eval_rows:,} held-out rows
  (`{data.eval_source}`)
- trained {train.steps} steps in {train.seconds:.0f} s
  ({train.samples_per_second:.1f} samples/s) with peftkit {manifest.versions.get("peftkit", "?")}

## Held-out metrics

| metric | value |
|---|---|
{metrics}
{_decision(manifest)}
## Load it

```python
import peftkit
model = peftkit.load("{folder_name}")
model.predict(["这台电脑散热很好", "房间太小了"])
```
{_load_with_peft(manifest, folder_name)}
`peftkit.json` holds the full resolved training config; `loss.png` the loss curve.
"""
