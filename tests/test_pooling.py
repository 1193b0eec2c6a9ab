"""Pooling: the head reads what the base was trained to produce (mean for sentence-transformers/E5 encoders),
resolved once, saved in the manifest and used again on reload."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import peftkit
from peftkit import pooling
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.training.loop import train

ENCODER = {"model_type": "bert", "architectures": ["BertModel"]}
DECODER = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def _st_pooling(folder, mode: str) -> None:
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean"})
    )


def test_auto_reads_the_folder_then_falls_back_to_the_architecture(tmp_path):
    assert pooling.resolve(tmp_path, ENCODER, "auto") == "cls"
    assert pooling.resolve(tmp_path, DECODER, "auto") == "last"
    _st_pooling(tmp_path, "mean")
    assert pooling.resolve(tmp_path, ENCODER, "auto") == "mean"
    assert pooling.resolve(tmp_path, ENCODER, "cls") == "cls"  # an explicit choice wins


def test_poolings_an_architecture_lacks_are_refused(tmp_path):
    with pytest.raises(PeftkitError, match="llama is a decoder.*model.pooling=last"):
        pooling.resolve(tmp_path, DECODER, "mean")
    with pytest.raises(PeftkitError, match="model.pooling=last is for decoders"):
        pooling.resolve(tmp_path, ENCODER, "last")


def test_mean_pooler_averages_real_tokens_only():
    pooler = pooling.MeanPooler()
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last position is padding
    pooler.mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pooler(hidden), torch.tensor([[2.0, 3.0]]))  # hand-computed: (1+3)/2, (2+4)/2


def test_mean_pooled_classifier_matches_the_hand_computed_head():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertForSequenceClassification(cfg).eval()
    pooling.apply(model, "mean")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        states = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (2, 4, 16)
        mean = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        expected = model.classifier(mean)
        alone = model(input_ids=ids[1:, :2], attention_mask=mask[1:, :2]).logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits[1:], alone, rtol=0, atol=1e-5)  # padding does not move the mean


def test_mean_pooling_trains_saves_and_reloads_identically(tiny_models, intent_csv, tmp_path):
    base = tmp_path / "st-bert"
    shutil.copytree(tiny_models["bert"], base)
    _st_pooling(base, "mean")
    cfg = load_config(
        None,
        {
            "model.name": str(base),
            "data.train": str(intent_csv),
            "train.max_steps": 4,
            "output": str(tmp_path / "a"),
        },
    )
    result = train(cfg, progress=False)
    assert result.manifest.pooling == "mean" and result.manifest.config["model"]["pooling"] == "auto"
    assert isinstance(result.predictor.model.base_model.model.bert.pooler, pooling.MeanPooler)
    probe = ["buy now the blue shirt", "just browsing"]
    reloaded = peftkit.load(str(tmp_path / "a"))
    np.testing.assert_array_equal(reloaded.logits(probe), result.predictor.logits(probe))
    assert isinstance(reloaded.model.base_model.model.bert.pooler, pooling.MeanPooler)


def test_a_bank_refuses_adapters_that_pool_differently(bank_header):
    from pathlib import Path

    from conftest import check_compatible

    bank = bank_header
    manifest = {**bank, "config": {"data": {"max_length": 8}}, "pooling": "mean"}
    with pytest.raises(PeftkitError, match="pools with 'mean', the bank's base with None"):
        check_compatible(bank, manifest, Path("a"))
    check_compatible({**bank, "pooling": "mean"}, manifest, Path("a"))
    check_compatible(bank, {**manifest, "pooling": "cls"}, Path("a"))  # cls is transformers' own, as before
