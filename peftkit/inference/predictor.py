"""Inference: a base model with one adapter attached, answering texts with labels, probabilities or scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from peftkit.errors import PeftkitError

if TYPE_CHECKING:
    from peftkit.artifacts.manifest import Manifest


@dataclass(frozen=True)
class Prediction:
    """One answer. ``label`` and ``probabilities`` for classification/ordinal, ``score`` for regression.
    ``version``: the adapter version that answered (``hotel@v3``), None for an adapter without versions."""

    label: str | None
    score: float | None
    probabilities: dict[str, float] | None
    adapter: str
    version: str | None = None


class Predictor:
    """A model ready to predict. Build it with `peftkit.load`; `peftkit train` returns one too."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        task: str,
        labels: list[str] | None,
        max_length: int,
        adapter: str,
        manifest: Manifest | None = None,
        batch_size: int = 64,
    ):
        from peftkit.tasks import TASKS

        self.model, self.tokenizer = model, tokenizer
        self.task = TASKS[task]
        self.labels, self.max_length, self.adapter = labels, max_length, adapter
        self.manifest = manifest  # the adapter's peftkit.json; set by training once the run is saved
        self.batch_size = batch_size

    @property
    def device(self):
        return next(p for p in self.model.parameters()).device

    def logits(self, texts: list[str], adapter_names: list[str] | None = None) -> np.ndarray:
        """Raw head outputs, (N, num_outputs) float32, in input order; see `batched_logits`. Personal data is masked
        first when the adapter was trained with ``data.mask_pii`` (`peftkit.data.privacy`)."""
        from peftkit.data.privacy import adapter_masks, mask_texts

        if self.manifest is not None and not isinstance(texts, str) and adapter_masks(self.manifest.config):
            texts = mask_texts(list(texts))
        return batched_logits(
            self.model,
            self.tokenizer,
            texts,
            max_length=self.max_length,
            batch_size=self.batch_size,
            adapter_names=adapter_names,
        )

    def predict(self, texts: list[str]) -> list[Prediction]:
        """One `Prediction` per text, in order; non-finite head outputs (damaged weights) are an error, never a
        label."""
        logits = self.logits(texts)
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1)) if len(texts) else []
        if len(bad):
            raise PeftkitError(
                f"adapter {self.adapter!r} gave non-finite outputs for {len(bad)} of {len(texts)} texts (the first: "
                f"text {bad[0] + 1}); its weights or base are damaged"
            )
        return decode_predictions(
            self.task, self.labels, logits, [self.adapter] * len(texts), {self.adapter: self.decision}
        )

    @property
    def decision(self):
        """How this adapter's outputs become probabilities and labels (`peftkit.tasks.Decision`): its fitted
        temperature and threshold, or argmax for adapters written before them."""
        from peftkit.tasks import IDENTITY

        return self.manifest.decision if self.manifest is not None else IDENTITY

    def predict_columns(self, texts: list[str]) -> dict[str, list]:
        """Columns for a predictions file: ``prediction``, one ``prob_<label>`` per class, ``adapter``."""
        return prediction_columns(self.predict(texts), self.labels)


def batched_logits(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int,
    adapter_names: list[str] | None = None,
) -> np.ndarray:
    """Raw head outputs of `model` for `texts`, (N, num_outputs) float32, in input order: the one forward loop that
    predictors, banks and the server all run.

    Rows are batched by length (less padding) and put back in order; dropout is off. ``adapter_names`` (one per
    text) runs each row through its own loaded adapter within the same batch, for methods that can
    (`MethodSpec.mixed_batch`); without it the active adapter answers every row.
    """
    import torch

    if isinstance(texts, str):
        raise TypeError("predict() takes a list of texts; wrap a single text in a list")
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out: list[np.ndarray | None] = [None] * len(texts)
    device = next(p for p in model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                if adapter_names is not None:
                    batch["adapter_names"] = [adapter_names[i] for i in idx]
                logits = model(**batch).logits.float().cpu().numpy()  # (b, num_outputs)
                for row, i in zip(logits, idx):
                    out[i] = row
    finally:
        model.train(was_training)
    return np.stack(out)


def decode_predictions(
    task, labels: list[str] | None, logits: np.ndarray, adapters: list[str], decisions: dict | None = None
) -> list[Prediction]:
    """Head outputs -> one `Prediction` per row; ``adapters[i]`` names the adapter that answered row ``i``, and
    ``decisions[adapter]`` (default: argmax, no calibration) is how that adapter's outputs are decoded."""
    from peftkit.tasks import IDENTITY

    if not len(adapters):
        return []
    results: list[Prediction | None] = [None] * len(adapters)
    for adapter in dict.fromkeys(adapters):
        rows = [i for i, a in enumerate(adapters) if a == adapter]
        decoded = task.decode(logits[rows], (decisions or {}).get(adapter, IDENTITY))
        for j, i in enumerate(rows):
            if decoded.score is not None:
                results[i] = Prediction(None, float(decoded.score[j]), None, adapter)
            else:
                probs = {lab: float(p) for lab, p in zip(labels, decoded.probs[j])}
                results[i] = Prediction(labels[decoded.index[j]], None, probs, adapter)
    return results


def prediction_columns(preds: list[Prediction], labels: list[str] | None) -> dict[str, list]:
    """Columns for a predictions file: ``prediction``, one ``prob_<label>`` per class, ``adapter``."""
    cols: dict[str, list] = {"prediction": [p.label if p.score is None else p.score for p in preds]}
    for lab in labels or []:
        cols[f"prob_{lab}"] = [p.probabilities[lab] for p in preds]
    cols["adapter"] = [p.adapter for p in preds]
    if any(p.version is not None for p in preds):  # versioned banks only: other outputs keep their columns
        cols["version"] = [p.version for p in preds]
    return cols


def load_predictor(
    adapter: str | Path,
    *,
    base: str | None = None,
    quant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Predictor:
    """Attach a saved adapter to its base; see `peftkit.load`."""
    from peftkit import models
    from peftkit.artifacts.adapter_check import check_adapter_files, loading_errors
    from peftkit.artifacts.manifest import read_manifest
    from peftkit.methods import METHODS
    from peftkit.models import resolve_adapter_base

    folder = Path(adapter)
    manifest = read_manifest(folder)
    spec = METHODS.get(manifest.method)
    if spec is None:
        raise PeftkitError(f"adapter {folder} uses method {manifest.method!r}, unknown to this peftkit")
    check_task(manifest, folder)
    check_adapter_files(folder, manifest)  # before the base loads: a damaged folder costs no model work
    ref = resolve_adapter_base(manifest, folder, base, "base=")
    device = device or models.default_device()
    tokenizer = models.load_tokenizer(ref)
    model, _ = models.load_base(
        ref,
        manifest.num_outputs,
        quant=quant or manifest.quant,
        dtype=_dtype(dtype) or models.stored_dtype(manifest.trained_dtype, device),
        device=device,
        pad_token_id=tokenizer.pad_token_id,
        pooling=manifest.pooling,  # None in manifests from before pooling was a setting: transformers' own
    )
    with loading_errors(folder, ref.name):
        model = spec.attach(model, folder)
    model.eval()
    return Predictor(
        model,
        tokenizer,
        task=manifest.task,
        labels=manifest.labels,
        max_length=manifest.max_length,
        adapter=folder.name,
        manifest=manifest,
    )


def check_task(manifest: Manifest, folder: Path) -> None:
    """Refuse a manifest whose task or labels this peftkit cannot decode, naming the folder."""
    from peftkit.tasks import TASKS

    if manifest.task not in TASKS:
        raise PeftkitError(
            f"adapter {folder}: task {manifest.task!r} is unknown to this peftkit (known: {', '.join(TASKS)})"
        )
    if manifest.task != "regression" and not manifest.labels:
        raise PeftkitError(
            f"adapter {folder}: a {manifest.task} adapter without labels; peftkit.json is damaged"
        )
    if manifest.labels and TASKS[manifest.task].num_outputs(manifest.labels) != manifest.num_outputs:
        raise PeftkitError(
            f"adapter {folder}: {len(manifest.labels)} labels need {TASKS[manifest.task].num_outputs(manifest.labels)} "
            f"outputs for {manifest.task}, peftkit.json says {manifest.num_outputs}; peftkit.json is damaged"
        )


def _dtype(value: str | None) -> str | None:
    if value not in (None, "float32", "bfloat16"):
        raise PeftkitError(
            f"dtype={value!r}: use 'float32', 'bfloat16' or None (the dtype the adapter trained in)"
        )
    return value
