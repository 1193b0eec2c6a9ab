"""The defaults that adapt to the run (docs/quality.md): the plan (epochs, learning rates), the head's start
(verbalizer, cumulative link), the best checkpoint and batches redrawn every epoch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from peftkit import heads
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.selection import KeepBest
from peftkit.training.loop import train
from peftkit.training.plan import make_plan
from tests.conftest import intent_rows


def test_plan_lengthens_short_runs_and_scales_their_learning_rates():
    cfg = load_config(None, {"method.name": "lora", "train.batch_size": 16})
    plan = make_plan(250, cfg)  # 16 steps an epoch
    assert plan.epochs == 7 and plan.steps == 112  # ceil(100 / 16) epochs
    assert plan.lr == pytest.approx(1e-3 * math.sqrt(500 / 112))
    assert plan.head_lr == pytest.approx(5 * plan.lr)
    big = make_plan(16_000, cfg)  # 1,000 steps: the method's own rate, one epoch
    assert (big.epochs, big.steps, big.lr, big.head_lr) == (1.0, 1000, 1e-3, 5e-3)
    tiny = make_plan(16, cfg)  # 1 step an epoch: at most 10 epochs, the rate at most 4x
    assert (tiny.epochs, tiny.lr) == (10.0, 4e-3)


def test_plan_keeps_what_the_config_sets():
    cfg = load_config(
        None, {"train.epochs": 2, "train.lr": 3e-4, "train.head_lr": 1e-3, "train.batch_size": 16}
    )
    plan = make_plan(250, cfg)
    assert (plan.epochs, plan.steps, plan.lr, plan.head_lr) == (2.0, 32, 3e-4, 1e-3)
    assert plan.why == {"epochs": "train.epochs", "lr": "train.lr", "head_lr": "train.head_lr"}
    full = make_plan(250, load_config(None, {"method.name": "full", "train.batch_size": 16}))
    assert full.lr == 5e-5  # full fine-tuning is never scaled
    assert (
        make_plan(
            250,
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"head_lr": None})}),
            head_init="verbalizer",
        ).head_lr
        == 3e-4
    )


def test_cumulative_logits_are_the_label_shares():
    # labels 0,0,1,2 -> add-one counts 3,2,2 of 7: P(y>0) = 4/7, P(y>1) = 2/7
    np.testing.assert_allclose(
        heads.cumulative_logits([0, 0, 1, 2], 3), [math.log(4 / 3), math.log(2 / 5)], rtol=1e-6
    )


def test_keep_best_restores_the_best_evaluated_weights():
    layer = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.8, 0.6])
    weights = []

    def evaluate():
        weights.append(layer.weight.detach().clone())
        return {"macro_f1": next(scores)}, 1.0  # classification's primary metric

    class State:
        global_step, epoch = 0, 0

    keep, state = KeepBest(layer, evaluate, "classification"), State()
    for step in (1, 2, 3):
        with torch.no_grad():
            layer.weight.add_(1.0)  # a "training step"
        state.global_step = state.epoch = step
        if step < 3:
            keep.on_epoch_end(None, state, None)
    keep.on_train_end(None, state, None)  # evaluates step 3, then puts step 2's weights back
    assert [e["step"] for e in keep.history] == [1, 2, 3] and keep.best_step == 2
    torch.testing.assert_close(layer.weight, weights[1])


def test_keep_best_waits_for_the_settled_step():
    layer = torch.nn.Linear(2, 1)
    keep = KeepBest(layer, lambda: ({"mae": 0.1}, 0.0), "ordinal", settled_step=5)

    class State:
        global_step, epoch = 3, 1

    keep.on_epoch_end(None, State(), None)
    assert keep.history == []  # before AdaLoRA's final rank pattern: not a candidate


def _run_config(tiny_models, tmp_path, overrides: dict):
    """A tiny-bert run on 160 synthetic intent rows, with the given config overrides."""
    path = tmp_path / "intent.csv"
    intent_rows(160).to_csv(path, index=False)
    base = {"model.name": str(tiny_models["bert"]), "data.train": str(path), "output": str(tmp_path / "out")}
    return load_config(None, base | overrides)


def test_a_run_evaluates_every_epoch_and_writes_the_kept_adapter(tiny_models, tmp_path):
    cfg = _run_config(tiny_models, tmp_path, {"train.epochs": 3, "train.batch_size": 16})
    result = train(cfg, progress=False)
    selection = result.manifest.train.selection
    assert [e["epoch"] for e in selection["evaluations"]] == [1.0, 2.0, 3.0]
    kept = next(e for e in selection["evaluations"] if e["step"] == selection["kept_step"])
    assert kept["macro_f1"] == max(e["macro_f1"] for e in selection["evaluations"])
    # the adapter written is the kept one
    assert result.metrics["macro_f1"] == pytest.approx(kept["macro_f1"])
    saved = json.loads((tmp_path / "out" / "peftkit.json").read_text())
    assert saved["train"]["plan"]["why"]["lr"].startswith("auto")


class GroupLrs(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.groups = [
            (g["initial_lr"], {tuple(p.shape) for p in g["params"]}) for g in optimizer.param_groups
        ]


def test_the_head_trains_at_its_own_learning_rate(tiny_models, tmp_path):
    cfg = _run_config(tiny_models, tmp_path, {"train.max_steps": 2, "train.lr": 1e-3})
    spy = GroupLrs()
    train(cfg, progress=False, callbacks=[spy])
    head_rate = {lr for lr, shapes in spy.groups if (3, 32) in shapes}
    assert head_rate == {5e-3}  # the classifier's (3 labels x 32 hidden) weight: 5 x lr
    assert {lr for lr, shapes in spy.groups if (8, 32) in shapes} == {1e-3}  # LoRA's A matrices


def test_an_ordinal_encoder_head_is_a_cumulative_link(tiny_models, tmp_path):
    cfg = _run_config(
        tiny_models,
        tmp_path,
        {"task": "ordinal", "data.labels": ["weak", "medium", "strong"], "train.max_steps": 6},
    )
    result = train(cfg, progress=False)
    assert result.manifest.head_init == "cumulative"
    layer = next(
        m
        for n, m in result.predictor.model.named_modules()
        if n.endswith("classifier.modules_to_save.default")
    )
    assert torch.equal(layer.weight[0], layer.weight[1]), "the K-1 outputs share one weight row"
    assert not torch.equal(layer.weight[0], torch.zeros_like(layer.weight[0]))
    assert layer.bias[0] > layer.bias[1], "thresholds stay ordered: P(y > 0) > P(y > 1)"


def _tied_llama(folder):
    from transformers import AutoTokenizer

    from tests.conftest import save_tiny

    save_tiny(folder, "llama", 0, tied=True)
    return folder, AutoTokenizer.from_pretrained(str(folder))


def test_a_decoder_head_starts_as_the_lm_head_of_its_label_words(tmp_path):
    from transformers import AutoModelForCausalLM

    from peftkit import models

    folder, tok = _tied_llama(tmp_path / "llama")
    base = models.resolve(str(folder))
    model, names = models.load_base(
        base, 3, quant="none", dtype="float32", device="cpu", pad_token_id=tok.pad_token_id
    )
    assert heads.resolve("auto", model, decoder=True, task="classification") == "verbalizer"
    labels = ["weak", "medium", "strong"]
    heads.initialise(
        model,
        names,
        "verbalizer",
        labels=labels,
        train_labels=[0, 1, 2],
        tokenizer=tok,
        task="classification",
    )
    lm = AutoModelForCausalLM.from_pretrained(str(folder))
    enc = tok(["i will buy it today"], return_tensors="pt")
    with torch.no_grad():
        lm_logits = lm(**enc).logits[0, -1]
        head_logits = model(**enc).logits[0]
    ids = [tok(" " + label, add_special_tokens=False)["input_ids"] for label in labels]
    assert all(
        len(i) == 1 for i in ids
    )  # single-token words: the head's logits are the LM's for those tokens
    torch.testing.assert_close(head_logits, lm_logits[[i[0] for i in ids]], rtol=1e-4, atol=1e-5)


def test_verbalizer_is_refused_where_it_cannot_work(tiny_models):
    from peftkit import models

    base = models.resolve(str(tiny_models["llama"]))  # untied LM head
    model, _ = models.load_base(base, 2, quant="none", dtype="float32", device="cpu", pad_token_id=0)
    assert heads.resolve("auto", model, decoder=True, task="classification") == "random"
    with pytest.raises(PeftkitError, match="head_init=random"):
        heads.resolve("verbalizer", model, decoder=True, task="classification")
    with pytest.raises(PeftkitError, match="needs a decoder"):
        heads.resolve("verbalizer", model, decoder=False, task="classification")


def test_length_grouped_batches_are_redrawn_every_epoch(tiny_models, tmp_path):
    from peftkit import models
    from peftkit.tasks import TASKS
    from peftkit.training.hf_trainer import encode, make_trainer, training_arguments
    from peftkit.training.plan import make_plan

    cfg = load_config(None, {"model.name": str(tiny_models["bert"]), "train.batch_size": 16})
    texts = [" ".join(["word"] * (3 + i % 40)) for i in range(270)]
    tok = models.load_tokenizer(models.resolve(str(tiny_models["bert"])))
    args = training_arguments(cfg, make_plan(270, cfg), tmp_path, "cpu", progress=False)
    trainer = make_trainer(
        torch.nn.Linear(1, 1),
        args,
        encode(tok, texts, [0] * 270, cfg),
        tok,
        TASKS["classification"],
        None,
        [],
    )
    loader = trainer.get_train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append({tuple(sorted(b["input_ids"].sum(1).tolist())) for b in loader})
    assert len(epochs[0] & epochs[1]) < len(epochs[0]) // 2, "most batches differ between epochs"
