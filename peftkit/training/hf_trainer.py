"""peftkit's Trainer: HF Trainer plus the task loss, the method's extra loss, a NaN guard and adapter-only
checkpoints. Everything else (accumulation, mixed precision, checkpoint rotation, resume, logging, DDP) is Trainer's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from peftkit.artifacts.names import WEIGHTS
from peftkit.config import RunConfig
from peftkit.errors import NonFiniteLossError, PeftkitError
from peftkit.training.plan import SELECTION_STATE, SELECTION_WEIGHTS, Plan


def training_arguments(
    cfg: RunConfig, plan: Plan, output_dir: Path, device: str, progress: bool, autocast: bool = False
):
    """`TrainingArguments` for a run: the one place run config (and its `Plan`) becomes Trainer settings.

    ``autocast``: bf16 autocast around float32 weights (a method that trains the whole base in float32). A base stored
    in bf16 needs none: it computes in bf16, adapters and head in their own float32, as at inference.
    """
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        learning_rate=plan.lr,
        num_train_epochs=plan.epochs,
        max_steps=cfg.train.max_steps,
        lr_scheduler_type=cfg.train.scheduler,
        warmup_steps=cfg.train.warmup_ratio,  # a float < 1 is a fraction of the run
        weight_decay=cfg.train.weight_decay,
        seed=cfg.train.seed,
        logging_steps=cfg.train.logging_steps,
        logging_nan_inf_filter=False,  # the default logs 0.0 for a NaN loss, hiding the failure
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        save_total_limit=2,
        report_to=cfg.train.report_to or "none",
        # Rows of similar length batched together: far less padding, same data and epochs.
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=autocast,
        torch_compile=cfg.train.compile and _can_compile(device),
        disable_tqdm=not progress,
        dataloader_pin_memory=device.startswith("cuda"),
        use_cpu=device == "cpu",
        # Every trainable parameter (adapter, head) is used in every forward, so DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
    )


def _can_compile(device: str) -> bool:
    """torch.compile on CPU generates C++: without a compiler it would fail at the first step, so train eagerly."""
    import logging
    import shutil

    if device == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        logging.getLogger("peftkit").warning(
            "train.compile: no C++ compiler on PATH, training without torch.compile"
        )
        return False
    import torch._dynamo

    # A graph that fails to compile runs eagerly instead of failing the run.
    torch._dynamo.config.suppress_errors = True
    return True


def encode(tokenizer, texts: list[str], labels: list, cfg: RunConfig):
    """Tokenised rows (no padding yet) with labels and the length column the length-grouped sampler reads."""
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)
    columns = {k: enc[k] for k in enc.keys()}
    return Dataset.from_dict({**columns, "labels": labels, "length": [len(ids) for ids in enc["input_ids"]]})


def count_tokens(counts: dict[str, int], batch) -> None:
    """Add one training batch's tokens to `counts`: real ones (attention mask) and computed ones (padding included),
    for the tokens/s and FLOP/s figures. Called from the loss, not the collator: accelerate collates one batch ahead,
    so a run stopped by max_steps collates a batch it never trains on."""
    counts["real_tokens"] += int(batch["attention_mask"].sum())
    counts["padded_tokens"] += batch["input_ids"].numel()


def make_trainer(
    model,
    args,
    dataset,
    tokenizer,
    task,
    spec,
    callbacks,
    head_params=(),
    head_lr=None,
    keep_best=None,
    class_weights=None,
):
    """peftkit's Trainer for `model`; `head_params` train at `head_lr` (default: the adapter's rate); `keep_best`
    (a `peftkit.selection.KeepBest` among `callbacks`) has its state saved in every checkpoint and restored on
    resume; `class_weights` (K,) weight the task loss (`peftkit.tasks.decide.class_weights`)."""
    return PeftkitTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=functools.partial(_pad_without_length, DataCollatorWithPadding(tokenizer)),
        callbacks=callbacks,
        task=task,
        spec=spec,
        head_params=head_params,
        head_lr=head_lr,
        keep_best=keep_best,
        class_weights=class_weights,
    )


class EpochSeededLengthSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from a generator seeded by (seed, epoch) instead of the global RNG.

    Trainer's own sampler draws each epoch's order from the global torch RNG when the epoch's iterator starts; on a
    resume in the middle of an epoch that RNG has not been restored yet, so the resumed epoch saw other batches than
    the uninterrupted run (weights 0.04-0.05 apart). Here each epoch's order is a function of the seed and the epoch
    alone, the same in a fresh run, a resumed one and on every DDP rank; nothing needs saving in the checkpoint.
    Trainer (through accelerate's ``DataLoaderShard.set_epoch``) sets the epoch before each epoch's iterator.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & (2**63 - 1))
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def _pad_without_length(pad, features: list[dict]) -> dict:
    """A padded batch; the `length` column is for the length-grouped sampler, not the model."""
    return pad([{k: v for k, v in f.items() if k != "length"} for f in features])


class PeftkitTrainer(Trainer):
    """Trainer with the task's loss (plus the method's extra loss), a NaN guard, the head at its own learning rate
    and checkpoints that hold the adapter and head only.

    ``token_counts``: real and padded tokens of the batches this process trained on (`count_tokens`).
    """

    def __init__(
        self,
        *,
        task,
        spec,
        head_params=(),
        head_lr: float | None = None,
        keep_best=None,
        class_weights=None,
        **trainer_kwargs,
    ):
        super().__init__(**trainer_kwargs)
        self.task_spec, self.method_spec = task, spec
        self.class_weights = class_weights
        self.head_params, self.head_lr = list(head_params), head_lr
        self.keep_best = keep_best
        self.token_counts = {"real_tokens": 0, "padded_tokens": 0}

    # Private override: transformers 5.23 has no public hook to choose the training sampler.
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthSampler(batch, list(dataset["length"]), self.args.seed)

    def create_optimizer(self, model=None):
        # Trainer's optimizer (its class, decay groups, fused kernels), with the head's parameters moved to groups of
        # their own at head_lr; the scheduler created next scales every group alike.
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.head_lr is not None and self.head_lr != self.args.learning_rate:
            _move_to_own_groups(optimizer, {id(p) for p in self.head_params}, self.head_lr)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            count_tokens(self.token_counts, inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.task_spec.loss(outputs.logits, labels, self.class_weights)
        if self.method_spec.extra_loss is not None and model.training:
            loss = loss + self.method_spec.extra_loss(self.accelerator.unwrap_model(model))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}"
            )
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the adapter and head only (a few MB), never the frozen base: Trainer's checkpoints call this.

        In place of Trainer's save, whose other branches (XLA, SageMaker, FSDP, DeepSpeed, Hub push) peftkit never
        takes."""
        model = self.accelerator.unwrap_model(self.model)
        folder = Path(output_dir or self.args.output_dir)
        self.method_spec.save(model, folder)
        if _internal_call and self.keep_best is not None:  # a checkpoint: the selection so far goes with it
            save_selection(self.keep_best, self.state, folder)

    # Private override: transformers 5.23 has no public hook to load a checkpoint's weights on resume.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from peft import PeftModel

        if self.keep_best is not None:
            load_selection(self.keep_best, Path(resume_from_checkpoint))
        target = self.accelerator.unwrap_model(model or self.model)
        if isinstance(target, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (
            self.method_spec.warm_start is not None
        ):  # peftkit's own methods: adapter and head, with their checks
            return self.method_spec.warm_start(target, Path(resume_from_checkpoint))
        from safetensors.torch import load_file

        inner = getattr(target, "model", target)
        result = inner.load_state_dict(load_file(str(Path(resume_from_checkpoint) / WEIGHTS)), strict=False)
        if result.unexpected_keys:
            raise PeftkitError(
                f"checkpoint {resume_from_checkpoint} does not match this model; drop --resume"
            )


def _move_to_own_groups(optimizer, moved_ids: set[int], lr: float) -> None:
    """Move the parameters in `moved_ids` out of `optimizer`'s groups into copies of those groups at `lr`."""
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in moved_ids]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in moved_ids]
            optimizer.add_param_group(
                {**{k: v for k, v in group.items() if k != "params"}, "params": moved, "lr": lr}
            )
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]


def save_selection(keep_best, state, folder: Path) -> None:
    """Write `keep_best`'s evaluations and best weights into the checkpoint `folder`, so a resumed run chooses the
    same epoch as an uninterrupted one.

    Trainer saves the last step of an epoch before its epoch-end callbacks run: that epoch is evaluated here first
    (`KeepBest` skips a step it has already evaluated), else a run resumed from this checkpoint would never score it.
    Evaluation draws no random numbers, so the uninterrupted run is unchanged.
    """
    from safetensors.torch import save_file

    if state.epoch and float(state.epoch).is_integer():
        keep_best._consider(state)
    if not state.is_world_process_zero:
        return
    if keep_best.best_state is not None:
        save_file(
            {n: t.detach().cpu().contiguous() for n, t in keep_best.best_state.items()},
            folder / SELECTION_WEIGHTS,
        )
    record = {"history": keep_best.history, "best": keep_best.best, "best_step": keep_best.best_step}
    (folder / SELECTION_STATE).write_text(json.dumps(record), encoding="utf-8")


def load_selection(keep_best, folder: Path) -> None:
    """Restore what `save_selection` wrote into `keep_best` (a checkpoint without it restores nothing)."""
    from safetensors.torch import load_file

    if not (folder / SELECTION_STATE).is_file():
        return
    record = json.loads((folder / SELECTION_STATE).read_text(encoding="utf-8"))
    keep_best.history = record["history"]
    keep_best.best = tuple(record["best"]) if record["best"] is not None else None
    keep_best.best_step = record["best_step"]
    if (folder / SELECTION_WEIGHTS).is_file():
        params = dict(keep_best.model.named_parameters())
        keep_best.best_state = {
            n: t.to(device=params[n].device, dtype=params[n].dtype)
            for n, t in load_file(str(folder / SELECTION_WEIGHTS)).items()
        }
