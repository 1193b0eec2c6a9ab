"""The baseline rows of `peftkit compare`: what a user writes by hand instead of using peftkit.

This file deliberately does NOT go through peftkit's training path: it is the code one would write from the peft and
transformers docs, so that the comparison shows peftkit's own overhead or gain as a ratio. Both read the same rows
(the split peftkit made) and get the same budget (epochs, batch size); scoring uses the same metric code.

- ``peft+trainer``: ``AutoModelForSequenceClassification`` + ``LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05)``
  on peft's default target modules, ``Trainer`` with ``DataCollatorWithPadding`` (dynamic padding, random batch
  order) and the LoRA row's learning rate.
- ``tutorial``: the classic fine-tuning tutorial: every weight trains, ``padding="max_length"`` to 128 tokens,
  random batch order, lr 5e-5. Rows are cut at the recipe's ``max_length`` like every other row's (padded to 128, or
  to ``max_length`` when that is longer), so it reads the same tokens and differs only in how it trains on them.

Transformers' built-in head loss is cross-entropy, so these rows exist for classification recipes only.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftkit.compare.record import Trained
from peftkit.config import RunConfig
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS
from peftkit.training.plan import make_plan

TUTORIAL_LENGTH = 128
TUTORIAL_LR = 5e-5


@dataclass
class Setting:
    """How a baseline trains and reads its rows: learning rate, tokenizer arguments, fixed padded length."""

    lr: float
    encode: dict[str, Any]
    pad_to: int | None  # None: dynamic padding per batch


@dataclass
class Fit:
    """What the Trainer run gave: its timing, the tokens it read and the size of the saved folder."""

    seconds: float
    samples_per_second: float
    real_tokens: int
    padded_tokens: int
    saved_bytes: int


def run_baseline(name: str, cfg: RunConfig, splits, callbacks: list) -> Trained:
    """Train and score the baseline `name` on the compare's split, with the recipe's budget."""
    if cfg.task != "classification":
        raise PeftkitError(
            f"baseline {name}: transformers' built-in head trains classification only, not {cfg.task}"
        )
    from peftkit.tasks import TASKS

    model, tokenizer, total_params = _load(name, cfg, len(splits.labels))
    setting = _setting(name, cfg)
    fit = _fit(model, tokenizer, setting, cfg, splits, callbacks)
    predict_logits = _predictor(model, tokenizer, setting, cfg.train.eval_batch_size, len(splits.labels))
    task = TASKS[cfg.task]
    metrics = task.metrics(np.asarray(splits.eval_labels), task.decode(predict_logits(splits.eval_texts)))
    return Trained(
        metrics=metrics,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=total_params,
        adapter_bytes=fit.saved_bytes,
        seconds=fit.seconds,
        samples_per_second=fit.samples_per_second,
        real_tokens=fit.real_tokens,
        padded_tokens=fit.padded_tokens,
        predict_logits=predict_logits,
    )


def _load(name: str, cfg: RunConfig, num_labels: int):
    """The model (wrapped in peft's LoRA for ``peft+trainer``), its tokenizer and the base and head's size."""
    if name not in ("peft+trainer", "tutorial"):
        raise PeftkitError(f"unknown baseline {name!r}")
    from transformers import AutoModelForSequenceClassification, set_seed

    from peftkit import models

    base = models.resolve(
        cfg.model.name
    )  # the packaged model's folder: what from_pretrained("org/name") gives
    tokenizer = models.load_tokenizer(base)
    set_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base.folder), num_labels=num_labels, pad_token_id=tokenizer.pad_token_id
    )
    total_params = sum(p.numel() for p in model.parameters())  # the base and head, as peftkit's rows count it
    if name == "peft+trainer":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05)
        )
    return model, tokenizer, total_params


def _setting(name: str, cfg: RunConfig) -> Setting:
    # Both cut where every other row is cut (the same tokens read). The tutorial then pads to its fixed length: the
    # padding is the tutorial's waste; reading more of each review than the other rows would be a different task.
    encode = {"truncation": True, "max_length": cfg.data.max_length}
    if name == "peft+trainer":
        lr = cfg.train.lr if cfg.method.name == "lora" and cfg.train.lr else METHODS["lora"].default_lr
        return Setting(lr, encode, None)
    return Setting(TUTORIAL_LR, encode, max(TUTORIAL_LENGTH, cfg.data.max_length))


def _fit(model, tokenizer, setting: Setting, cfg: RunConfig, splits, callbacks: list) -> Fit:
    """Train with the plain Trainer, timed as peftkit's own runs are, and save what the user would ship."""
    from transformers import DataCollatorWithPadding, Trainer

    from peftkit.training.hf_trainer import count_tokens

    counts = {"real_tokens": 0, "padded_tokens": 0}

    class CountingTrainer(Trainer):  # the plain Trainer, plus the token counts the FLOP/s figures need
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                count_tokens(counts, inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    train_rows = _rows(tokenizer, splits.train_texts, splits.train_labels, setting.encode, setting.pad_to)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = CountingTrainer(
            model=model,
            args=_arguments(tmp, cfg, setting.lr, len(splits.train_texts)),
            train_dataset=train_rows,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=callbacks,
        )
        started = time.perf_counter()  # timed as peftkit's own runs are: around trainer.train()
        out = trainer.train()
        seconds = time.perf_counter() - started
        model.eval()
        model.save_pretrained(tmp + "/saved")  # what the user would ship: adapter folder, or the whole model
        size = sum(f.stat().st_size for f in Path(tmp, "saved").glob("*.safetensors"))
    return Fit(
        seconds=seconds,
        samples_per_second=out.metrics["train_samples_per_second"],
        real_tokens=counts["real_tokens"],
        padded_tokens=counts["padded_tokens"],
        saved_bytes=size,
    )


def _arguments(tmp: str, cfg: RunConfig, lr: float, train_rows: int):
    from transformers import TrainingArguments

    from peftkit import models

    return TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=cfg.train.batch_size,
        num_train_epochs=make_plan(train_rows, cfg).epochs,  # the same budget as peftkit's rows
        max_steps=cfg.train.max_steps,
        learning_rate=lr,
        seed=cfg.train.seed,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=models.default_device() == "cpu",
    )


def _predictor(model, tokenizer, setting: Setting, batch_size: int, num_labels: int):
    """texts -> (N, K) logits, in batches of `batch_size`, cut as the training rows were."""
    import torch

    def predict_logits(texts: list[str]) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[i : i + batch_size], return_tensors="pt", padding=True, **setting.encode
                ).to(model.device)
                outs.append(model(**batch).logits.float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, num_labels))

    return predict_logits


def _rows(tokenizer, texts: list[str], labels: list, encode: dict, pad_to: int | None):
    from datasets import Dataset

    enc = tokenizer(texts, **encode)
    if pad_to is not None:  # the tokenizer refuses to pad past its truncation length in one call
        enc = tokenizer.pad(enc, padding="max_length", max_length=pad_to)
    return Dataset.from_dict({**{k: enc[k] for k in enc.keys()}, "labels": labels})
