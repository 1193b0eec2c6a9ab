"""model.dtype: what `auto` picks and why, a bf16 base under float32 adapters and heads, and what is recorded.

bf16 runs here use the tiny models: on a CPU without bf16 units a bf16 matmul is slow, but these are small.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import check_compatible

import peftkit
from peftkit import models
from peftkit.artifacts.names import MANIFEST
from peftkit.config import load_config
from peftkit.dropout import BitsDropout
from peftkit.errors import PeftkitError
from peftkit.training.loop import train

PROBE = ["buy now the blue shirt", "just browsing", "compare prices of the laptop"]


@pytest.fixture
def units(monkeypatch):
    """Pretend the CPU has the given bf16 units."""

    def set_units(*names):
        monkeypatch.setattr(models, "cpu_bf16_units", lambda: list(names))

    return set_units


def test_auto_follows_the_cpus_bf16_units(units):
    units()
    assert models.resolve_dtype("auto", "cpu") == (
        "float32",
        "auto: this CPU has no bf16 matrix units (AMX-BF16 / AVX512-BF16), where bf16 is slower",
    )
    units("AMX-BF16")
    dtype, why = models.resolve_dtype("auto", "cpu")
    assert dtype == "bfloat16" and "AMX-BF16" in why
    assert models.resolve_dtype("float32", "cpu") == ("float32", "model.dtype=float32")
    assert models.torch_dtype("bfloat16", "cpu") is torch.bfloat16
    # Combinations whose bf16 reload is not exact on CPU yet stay float32, and say why.
    assert models.resolve_dtype("auto", "cpu", quant="8bit") == (
        "float32",
        "auto: float32 for quant=8bit on CPU (its bf16 reload is not yet exact)",
    )
    for method in ("adalora", "full"):
        assert models.resolve_dtype("auto", "cpu", method=method)[0] == "float32"
    for method in ("lora", "prefix", "bottleneck"):
        assert models.resolve_dtype("auto", "cpu", method=method)[0] == "bfloat16"
    assert models.resolve_dtype("bfloat16", "cpu", quant="8bit")[0] == "bfloat16"  # asked for: honoured


def test_recorded_auto_keeps_its_old_meaning(units):
    # Today auto would pick bf16 here; adapters that recorded "auto" trained in float32 on CPU.
    units("AMX-BF16")
    assert models.stored_dtype("auto", "cpu") == "float32"
    assert models.stored_dtype("bfloat16", "cpu") == "bfloat16"


def _train(tiny_models, csv, out, method="lora", **overrides):
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "method.name": method,
            "data.train": str(csv),
            "train.max_steps": 3,
            "output": str(out),
            **overrides,
        },
    )
    return train(cfg, progress=False)


@pytest.mark.parametrize("method", ["lora", "bottleneck", "prefix"])
def test_bf16_base_float32_head_and_adapter_reload_identically(
    tiny_models, intent_csv, tmp_path, units, method
):
    units("AMX-BF16")
    result = _train(tiny_models, intent_csv, tmp_path / "a", method)
    assert result.manifest.dtype == "bfloat16" and result.manifest.config["model"]["dtype"] == "auto"
    params = dict(result.predictor.model.named_parameters())
    trainable = {n: p.dtype for n, p in params.items() if p.requires_grad}
    # Adapter and head: float32 master weights.
    assert trainable and set(trainable.values()) == {torch.float32}
    frozen = {p.dtype for p in params.values() if not p.requires_grad and p.ndim == 2}
    assert torch.bfloat16 in frozen  # the base is stored in bf16
    units()  # a machine whose auto would pick float32 still reloads in what the adapter trained in
    reloaded = peftkit.load(str(tmp_path / "a"))
    assert any(p.dtype == torch.bfloat16 for p in reloaded.model.parameters())
    np.testing.assert_array_equal(reloaded.logits(PROBE), result.predictor.logits(PROBE))


def test_a_float32_head_keeps_steps_below_bf16_resolution(tiny_models, intent_csv, tmp_path, units):
    """AdamW moves each head weight by about the learning rate per step; at lr 1e-5 that is below half a bf16 step
    for weights over 0.01 (bf16 spacing there is >= 2**-14), so bf16 master weights would not move at all."""
    from transformers import set_seed

    units("AMX-BF16")
    result = _train(tiny_models, intent_csv, tmp_path / "a", "lora", **{"train.lr": 1e-5})
    head = result.predictor.model.base_model.model.classifier.modules_to_save["default"]
    set_seed(42)  # as train does before loading, so the fresh head starts from the same weights
    start = models.load_base(
        models.resolve(str(tiny_models["bert"])),
        head.out_features,
        quant="none",
        dtype="bfloat16",
        device="cpu",
        pad_token_id=0,
    )[0].classifier.weight.detach()
    assert head.weight.dtype == torch.float32 and start.dtype == torch.float32
    big = start.abs() > 0.01
    assert big.sum() > 10 and ((head.weight.detach() - start).abs()[big] > 0).all()


def test_old_adapters_that_recorded_auto_reload_in_float32(tiny_models, intent_csv, tmp_path, units):
    units()
    result = _train(tiny_models, intent_csv, tmp_path / "a")
    manifest_path = tmp_path / "a" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["dtype"]  # as written before the dtype was resolved at training time
    manifest_path.write_text(json.dumps(manifest))
    units("AMX-BF16")
    reloaded = peftkit.load(str(tmp_path / "a"))
    assert all(p.dtype == torch.float32 for p in reloaded.model.parameters())
    np.testing.assert_array_equal(reloaded.logits(PROBE), result.predictor.logits(PROBE))


def test_a_bank_refuses_an_adapter_trained_over_another_dtype(bank_header, tmp_path):
    bank = bank_header
    manifest = {**bank, "config": {"data": {"max_length": 8}, "model": {"dtype": "auto"}}}
    with pytest.raises(PeftkitError, match="trained over a bfloat16 base, the bank's base is float32"):
        check_compatible({**bank, "dtype": "float32"}, {**manifest, "dtype": "bfloat16"}, tmp_path)
    check_compatible({**bank, "dtype": "float32"}, {**manifest, "dtype": "float32"}, tmp_path)
    # A bank written before the dtype was resolved says "auto": nothing to compare.
    check_compatible({**bank, "dtype": "auto"}, {**manifest, "dtype": "bfloat16"}, tmp_path)


def test_doctor_names_the_chosen_dtype_and_why(tiny_models, units):
    from types import SimpleNamespace

    from peftkit.doctor import check_quant

    units()
    cfg = load_config(None, {"model.name": str(tiny_models["bert"])})
    detail = check_quant(SimpleNamespace(cfg=cfg, device="cpu")).detail
    assert "base in float32" in detail and "no bf16 matrix units" in detail


def test_a_bf16_base_on_cpu_computes_attention_eagerly(tiny_models, intent_csv, tmp_path, units):
    # torch's CPU SDPA is several times slower in bf16 than float32 (benchmarks/bf16): bf16 bases use eager attention.
    assert models.attention_implementation(torch.bfloat16, "cpu") == "eager"
    assert models.attention_implementation(torch.float32, "cpu") is None
    assert models.attention_implementation(torch.bfloat16, "cpu", quant="8bit") is None
    assert models.attention_implementation(torch.bfloat16, "cuda") is None
    units("AMX-BF16")
    result = _train(tiny_models, intent_csv, tmp_path / "a", "lora")
    assert result.predictor.model.config._attn_implementation == "eager"
    assert any(isinstance(m, BitsDropout) for m in result.predictor.model.modules())  # training's dropout
    reloaded = peftkit.load(str(tmp_path / "a"))
    assert reloaded.model.config._attn_implementation == "eager"
    np.testing.assert_array_equal(reloaded.logits(PROBE), result.predictor.logits(PROBE))


def test_load_can_override_the_trained_dtype(tiny_models, intent_csv, tmp_path, units):
    units()
    result = _train(tiny_models, intent_csv, tmp_path / "a")
    assert result.manifest.dtype == "float32"
    fast = peftkit.load(str(tmp_path / "a"), dtype="bfloat16")
    assert any(p.dtype == torch.bfloat16 for p in fast.model.parameters())
    # Close to the float32 logits (bf16 keeps ~3 significant digits), not identical.
    np.testing.assert_allclose(fast.logits(PROBE), result.predictor.logits(PROBE), atol=0.1)
    with pytest.raises(PeftkitError, match="dtype='float16'"):
        peftkit.load(str(tmp_path / "a"), dtype="float16")
