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

from peftkit.config import RunConfig
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS
from peftkit.training.plan import make_plan

TUTORIAL_LENGTH = 128
TUTORIAL_LR = 5e-5


@dataclass
class BaselineResult:
    """What a baseline run produced, in the shape the compare worker records."""

    metrics: dict[str, float]
    trainable_params: int
    total_params: int
    adapter_bytes: int
    seconds: float
    samples_per_second: float
    real_tokens: int
    padded_tokens: int
    model: Any
    predict_logits: Any  # texts -> (N, K) logits


def run_baseline(name: str, cfg: RunConfig, splits, callbacks: list) -> BaselineResult:
    if cfg.task != "classification":
        raise PeftkitError(
            f"baseline {name}: transformers' built-in head trains classification only, not {cfg.task}"
        )
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from peftkit import models
    from peftkit.tasks import TASKS
    from peftkit.training.hf_trainer import count_tokens

    base = models.resolve(
        cfg.model.name
    )  # the packaged model's folder: what from_pretrained("org/name") gives
    tokenizer = models.load_tokenizer(base)
    set_seed(cfg.train.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base.folder), num_labels=len(splits.labels), pad_token_id=tokenizer.pad_token_id
    )
    total_params = sum(p.numel() for p in model.parameters())  # the base and head, as peftkit's rows count it
    if name == "peft+trainer":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05)
        )
        lr = cfg.train.lr if cfg.method.name == "lora" and cfg.train.lr else METHODS["lora"].default_lr
        encode = {"truncation": True, "max_length": cfg.data.max_length}
        pad_to = None
    elif name == "tutorial":
        lr = TUTORIAL_LR
        # Cut where every other row is cut (the same tokens read), then pad to the tutorial's fixed length: the
        # padding is the tutorial's waste; reading more of each review than the other rows would be a different task.
        encode = {"truncation": True, "max_length": cfg.data.max_length}
        pad_to = max(TUTORIAL_LENGTH, cfg.data.max_length)
    else:
        raise PeftkitError(f"unknown baseline {name!r}")

    counts = {"real_tokens": 0, "padded_tokens": 0}

    class CountingTrainer(Trainer):  # the plain Trainer, plus the token counts the FLOP/s figures need
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                count_tokens(counts, inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    train_rows = _rows(tokenizer, splits.train_texts, splits.train_labels, encode, pad_to)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=cfg.train.batch_size,
            num_train_epochs=make_plan(
                len(splits.train_texts), cfg
            ).epochs,  # the same budget as peftkit's rows
            max_steps=cfg.train.max_steps,
            learning_rate=lr,
            seed=cfg.train.seed,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=models.default_device() == "cpu",
        )
        trainer = CountingTrainer(
            model=model,
            args=args,
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

    def predict_logits(texts: list[str]) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), cfg.train.eval_batch_size):
                batch = tokenizer(
                    texts[i : i + cfg.train.eval_batch_size],
                    return_tensors="pt",
                    padding=True,
                    **{k: v for k, v in encode.items() if k != "padding"},
                ).to(model.device)
                outs.append(model(**batch).logits.float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, len(splits.labels)))

    task = TASKS[cfg.task]
    metrics = task.metrics(np.asarray(splits.eval_labels), task.decode(predict_logits(splits.eval_texts)))
    return BaselineResult(
        metrics=metrics,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=total_params,
        adapter_bytes=size,
        seconds=seconds,
        samples_per_second=out.metrics["train_samples_per_second"],
        real_tokens=counts["real_tokens"],
        padded_tokens=counts["padded_tokens"],
        model=model,
        predict_logits=predict_logits,
    )


def _rows(tokenizer, texts: list[str], labels: list, encode: dict, pad_to: int | None):
    from datasets import Dataset

    enc = tokenizer(texts, **encode)
    if pad_to is not None:  # the tokenizer refuses to pad past its truncation length in one call
        enc = tokenizer.pad(enc, padding="max_length", max_length=pad_to)
    return Dataset.from_dict({**{k: enc[k] for k in enc.keys()}, "labels": labels})
