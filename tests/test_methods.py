"""The method matrix: every method x architecture x quantisation through the one training path, on tiny models.

Adding a method to `peftkit.methods.METHODS` adds it to every check here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import peftkit
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS
from peftkit.methods.prefix import plain_peft_runs_prefix
from peftkit.training.loop import train
from tests.conftest import intent_rows

ARCHS = ["bert", "llama"]
QUANTS = ["none", pytest.param("8bit", marks=pytest.mark.bnb)]
PROBE = ["buy now the blue shirt", "just browsing phones", "compare prices of laptop gift", "order two shoes"]
ADAPTER_MARKERS = (
    "lora_",
    "prompt_encoder",
    "prompt_embeddings",
    "modules_to_save",
    "adapters.",
    "classifier",
    "score",
)


@pytest.fixture(scope="session")
def trained(tiny_models, tmp_path_factory):
    """Train each (arch, method, quant) once per session; returns a getter."""
    root = tmp_path_factory.mktemp("matrix")
    data = root / "intent.csv"
    intent_rows(160).to_csv(data, index=False)
    cache = {}

    def get(arch: str, method: str, quant: str):
        key = (arch, method, quant)
        if key not in cache:
            cfg = load_config(
                None,
                {
                    "model.name": str(tiny_models[arch]),
                    "method.name": method,
                    "model.quant": quant,
                    "data.train": str(data),
                    "train.max_steps": 8,
                    "train.batch_size": 8,
                    "train.logging_steps": 2,
                    "output": str(root / "-".join(key)),
                },
            )
            cache[key] = train(cfg, progress=False)
        return cache[key]

    return get


matrix = pytest.mark.parametrize("quant", QUANTS)
archs = pytest.mark.parametrize("arch", ARCHS)
methods = pytest.mark.parametrize("method", list(METHODS))
# Full fine-tuning trains and saves every weight on purpose; the adapter-only checks are for the PEFT methods.
peft_methods = pytest.mark.parametrize("method", [m for m, s in METHODS.items() if not s.full_model])


@matrix
@archs
@methods
def test_reloaded_adapter_gives_identical_predictions(trained, arch, method, quant):
    if METHODS[method].full_model and quant == "8bit":
        pytest.skip("full fine-tuning refuses an 8-bit base (test_full_refuses_8bit_and_banks)")
    result = trained(arch, method, quant)
    before = result.predictor.logits(PROBE)
    reloaded = peftkit.load(str(result.output))
    after = reloaded.logits(PROBE)
    np.testing.assert_array_equal(before, after)
    assert [p.label for p in reloaded.predict(PROBE)] == [p.label for p in result.predictor.predict(PROBE)]


@matrix
@archs
@peft_methods
def test_only_adapter_and_head_parameters_train(trained, tiny_models, arch, method, quant):
    result = trained(arch, method, quant)
    trainable = [n for n, p in result.predictor.model.named_parameters() if p.requires_grad]
    assert trainable, "nothing was trained"
    assert all(any(m in n for m in ADAPTER_MARKERS) for n in trainable), trainable
    m = result.manifest
    assert 0 < m.trainable_params < m.total_params
    with safe_open(str(result.output / "adapter_model.safetensors"), "pt") as f:
        assert f.keys(), "adapter file is empty"
        assert all(any(mk in k for mk in ADAPTER_MARKERS) for k in f.keys())
        # The head travels with the adapter, so the folder alone reproduces predictions.
        assert any("classifier" in k or "score" in k for k in f.keys())


@archs
@peft_methods
def test_frozen_base_weights_are_untouched(trained, tiny_models, arch, method):
    from transformers import AutoModel

    result = trained(arch, method, "none")
    fresh = dict(AutoModel.from_pretrained(str(tiny_models[arch])).named_parameters())
    trained_params = dict(result.predictor.model.named_parameters())
    name = next(n for n in fresh if "layers.0" in n or "layer.0" in n)  # a first-layer weight
    match = [
        t
        for n, t in trained_params.items()
        if n.endswith(name) or n.endswith(name.replace(".weight", ".base_layer.weight"))
    ]
    assert match, f"{name} not found in trained model"
    torch.testing.assert_close(match[0].detach().cpu(), fresh[name].detach(), rtol=0, atol=0)


@archs
@peft_methods
def test_adapter_file_is_small_and_folder_complete(trained, tiny_models, arch, method):
    result = trained(arch, method, "none")
    base_bytes = sum(p.stat().st_size for p in tiny_models[arch].glob("*.safetensors"))
    assert (result.output / "adapter_model.safetensors").stat().st_size < 0.1 * base_bytes
    for name in ("adapter_config.json", "peftkit.json", "README.md", "loss.png"):
        assert (result.output / name).is_file(), name
    manifest = json.loads((result.output / "peftkit.json").read_text())
    assert manifest["labels"] == ["medium", "strong", "weak"]
    assert manifest["config"]["method"]["name"] == method
    assert not list(result.output.parent.glob(f".{result.output.name}.*")), (
        "temp or checkpoint folders left behind"
    )


@methods
def test_wrong_base_is_refused(trained, tiny_models, method):
    result = trained("llama", method, "none")
    with pytest.raises(PeftkitError, match=r"was trained on base .* but the base given, .*tiny-llama-other"):
        peftkit.load(str(result.output), base=str(tiny_models["llama-other"]))


@archs
@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.peft_native])
def test_peft_native_adapters_load_with_plain_peft(trained, tiny_models, arch, method):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = trained(arch, method, "none")
    tok = AutoTokenizer.from_pretrained(str(tiny_models[arch]))
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_models[arch]), num_labels=result.manifest.num_outputs, pad_token_id=tok.pad_token_id
    )
    if method == "prefix" and not plain_peft_runs_prefix(base):
        pytest.skip("peft's own prefix path needs past_key_values, which this transformers no longer threads")
    model = PeftModel.from_pretrained(base, str(result.output)).eval()
    with torch.inference_mode():
        for text, expected in zip(PROBE, result.predictor.logits(PROBE)):
            logits = model(**tok([text], return_tensors="pt", truncation=True, max_length=128)).logits[0]
            np.testing.assert_allclose(logits.numpy(), expected, rtol=0, atol=1e-5)


def test_pickle_adapter_is_refused(trained, tmp_path):
    import shutil

    result = trained("bert", "lora", "none")
    copy = tmp_path / "pickled"
    shutil.copytree(result.output, copy)
    (copy / "adapter_model.safetensors").rename(copy / "adapter_model.bin")
    with pytest.raises(PeftkitError, match="pickle adapter_model.bin; peftkit loads safetensors only"):
        peftkit.load(str(copy))


# --- full fine-tuning: the reference row of `peftkit compare` ---------------------------------------------------


@archs
def test_full_fine_tuning_trains_and_saves_every_weight(trained, tiny_models, arch):
    from transformers import AutoModel

    result = trained(arch, "full", "none")
    m = result.manifest
    assert m.trainable_params == m.total_params
    fresh = dict(AutoModel.from_pretrained(str(tiny_models[arch])).named_parameters())
    name = next(n for n in fresh if "layers.0" in n or "layer.0" in n)
    trained_params = dict(result.predictor.model.named_parameters())
    moved = next(t for n, t in trained_params.items() if n.endswith(name))
    assert not torch.equal(moved.detach().cpu(), fresh[name].detach()), "the base did not train"
    with safe_open(str(result.output / "adapter_model.safetensors"), "pt") as f:
        assert any(name in k for k in f.keys()) and any("classifier" in k or "score" in k for k in f.keys())


def test_full_refuses_8bit_and_banks():
    with pytest.raises(
        PeftkitError, match="method full trains every weight and int8 weights take no gradient"
    ):
        load_config(None, {"method.name": "full", "model.quant": "8bit"})
    with pytest.raises(PeftkitError, match="method full cannot train an adapter bank"):
        load_config(None, {"method.name": "full", "segments.column": "platform"})
