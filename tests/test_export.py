"""`peftkit export`: exported LoRA (converted from AdaLoRA too) and merged models answer exactly as the adapter does
when loaded with plain peft/transformers; what cannot be exported is refused with its reason.

A few training steps on CPU barely move the adapter weights, so a wrong conversion (a lost scale factor) would hide
inside float tolerance. The round trips therefore run on "loud" copies of the trained adapters whose LoRA weights
are replaced by large random ones: the export must be exact for any weights, and the tests check that the LoRA
layers really move the logits before comparing them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import peftkit
from peftkit.cli.export import export as export_cmd
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.export import export_adapter
from peftkit.training.loop import train
from tests.conftest import intent_rows

PROBE = ["buy now the blue shirt", "just browsing phones", "compare prices of laptop gift", "order two"]
ATOL = 1e-5


def _train(tiny_models, root: Path, out: str, model: str = "llama", steps: int = 8, **method) -> Path:
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models[model]),
            "data.train": str(root / "intent.csv"),
            "output": str(root / out),
            "train.max_steps": steps,
            "train.batch_size": 8,
            **{f"method.{k}": v for k, v in method.items()},
        },
    )
    return train(cfg, progress=False).output


def _loud_copy(src: Path, dst: Path, *, prune: str | None = None) -> Path:
    """A copy of `src` with large random LoRA weights; with `prune`, that AdaLoRA module cut to rank 0 as peft
    saves a fully pruned module ((0, d) tensors, an all-False rank-pattern row)."""
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for key, t in weights.items():
        if "lora_" in key:
            weights[key] = torch.randn(t.shape, generator=gen) * (3.0 if "lora_E" in key else 0.5)
    if prune is not None:
        stem = f"base_model.model.{prune}"
        for part in ("lora_A", "lora_E"):
            weights[f"{stem}.{part}"] = weights[f"{stem}.{part}"][:0]
        weights[f"{stem}.lora_B"] = weights[f"{stem}.lora_B"][:, :0]
        cfg = json.loads((dst / "adapter_config.json").read_text())
        row = f"{prune}.lora_E"
        cfg["rank_pattern"][row] = [False] * len(cfg["rank_pattern"][row])
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(weights, str(dst / "adapter_model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    intent_rows(120).to_csv(root / "intent.csv", index=False)
    lora = _train(tiny_models, root, "lora")
    ada = _train(
        tiny_models,
        root,
        "ada",
        steps=12,
        name="adalora",
        init_r=6,
        target_r=2,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    return {
        "lora": lora,
        "lora-loud": _loud_copy(lora, root / "lora-loud"),
        "adalora-loud": _loud_copy(ada, root / "ada-loud", prune="model.layers.0.self_attn.k_proj"),
        "prefix": _train(tiny_models, root, "prefix", steps=2, name="prefix", num_virtual_tokens=4),
        "bottleneck": _train(tiny_models, root, "bottleneck", steps=2, name="bottleneck", bottleneck_dim=8),
        "bert": _loud_copy(_train(tiny_models, root, "bert", model="bert", steps=3), root / "bert-loud"),
    }


def _classifier(base: Path, num_labels: int, head_file: Path | None):
    """The tiny base as a plain transformers sequence classifier, with the exported head loaded into it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=num_labels, pad_token_id=tok.pad_token_id
    )
    if head_file is not None:
        missing, unexpected = model.load_state_dict(load_file(str(head_file)), strict=False)
        assert not unexpected and not any(n.startswith(("score", "classifier")) for n in missing)
    return model.eval(), tok


def _logits(model, tok, texts) -> np.ndarray:
    with torch.no_grad():
        return np.stack([model(**tok([t], return_tensors="pt")).logits[0].numpy() for t in texts])


def _peft_classifier_logits(export: Path, base: Path, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits with the exported LoRA, logits of the same classifier with the LoRA switched off), plain peft."""
    from peft import PeftModel

    model, tok = _classifier(base, num_labels, export / "head.safetensors")
    peft_model = PeftModel.from_pretrained(model, str(export)).eval()
    with_lora = _logits(peft_model, tok, PROBE)
    with peft_model.disable_adapter():
        without = _logits(peft_model, tok, PROBE)
    return with_lora, without


def _lora_keys_only(export: Path) -> list[str]:
    with safe_open(str(export / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys), keys
    return keys


def test_lora_round_trip_with_plain_peft(adapters, tiny_models, tmp_path):
    src = adapters["lora-loud"]
    want = peftkit.load(str(src), device="cpu").logits(PROBE)
    summary = export_adapter(src, "peft-lora", tmp_path / "out")
    out = Path(summary["output"])

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["modules_to_save"] is None and cfg["task_type"] is None
    keys = _lora_keys_only(out)
    source = load_file(str(src / "adapter_model.safetensors"))
    assert "base_model.model.score.weight" in source and set(keys) == set(source) - {
        "base_model.model.score.weight"
    }
    exported = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.equal(exported[k], source[k]) for k in keys), "plain LoRA tensors are copied unchanged"
    assert torch.equal(
        load_file(str(out / "head.safetensors"))["score.weight"], source["base_model.model.score.weight"]
    )

    got, without = _peft_classifier_logits(out, tiny_models["llama"], 3)
    assert np.abs(want - without).max() > 100 * ATOL, (
        "the LoRA layers must move the logits for this test to bite"
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)

    record = json.loads((out / "export.json").read_text())
    manifest = json.loads((src / "peftkit.json").read_text())
    assert record["source"]["adapter"] == str(src.resolve()) and record["source"]["method"] == "lora"
    assert record["source"]["base"] == {
        "name": manifest["base"]["name"],
        "sha256": manifest["base"]["sha256"],
    }
    assert record["target"] == "peft-lora" and record["peftkit_version"] == peftkit.__version__
    assert "classification head" in (out / "README.md").read_text()


def test_adalora_converts_to_lora_exactly(adapters, tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = adapters["adalora-loud"]
    original = peftkit.load(str(src), device="cpu")
    want = original.logits(PROBE)
    pattern = json.loads((src / "adapter_config.json").read_text())["rank_pattern"]
    allocated = {k.removesuffix(".lora_E"): sum(v) for k, v in pattern.items()}
    pruned = "model.layers.0.self_attn.k_proj"
    assert allocated[pruned] == 0 and len({r for r in allocated.values()}) > 1

    vllm = Path(export_adapter(src, "vllm", tmp_path / "vllm")["output"])
    cfg = json.loads((vllm / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and not cfg["modules_to_save"]
    kept = {p: r for p, r in allocated.items() if r > 0}
    assert cfg["rank_pattern"] == kept and cfg["alpha_pattern"] == kept  # scale alpha_k / r_k = 1 everywhere
    assert cfg["r"] == cfg["lora_alpha"] == max(kept.values())  # vLLM's single alpha / r is 1 too
    dropped = sorted(p for p, r in allocated.items() if r == 0)
    assert (
        pruned in dropped and sorted(cfg["exclude_modules"]) == dropped
    )  # a set of modules: order is not the contract
    keys = _lora_keys_only(vllm)
    assert {k.removeprefix("base_model.model.").rsplit(".", 2)[0] for k in keys} == set(kept)
    record = json.loads((vllm / "export.json").read_text())
    assert record["lora"]["ranks"] == kept and sorted(record["lora"]["dropped_modules"]) == dropped
    assert record["lora"]["causal_lm_architecture"] == "LlamaForCausalLM"

    # Per module: the LoRA update equals AdaLoRA's, to float32 rounding of its size.
    base_lm = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    lm = PeftModel.from_pretrained(base_lm, str(vllm)).eval()
    lora_layers = {
        n.removeprefix("base_model.model."): m for n, m in lm.named_modules() if hasattr(m, "lora_A")
    }
    assert set(lora_layers) == set(kept), "the pruned module must not get a LoRA layer"
    ada_layers = {
        n.removeprefix("base_model.model."): m
        for n, m in original.model.named_modules()
        if hasattr(m, "lora_E")
    }
    for path, layer in lora_layers.items():
        want_delta = ada_layers[path].get_delta_weight("default").detach().numpy()
        np.testing.assert_allclose(
            layer.get_delta_weight("default").detach().numpy(),
            want_delta,
            rtol=0,
            atol=1e-6 * np.abs(want_delta).max(),  # float32 rounding of a product of three factors
            err_msg=path,
        )

    # vLLM's view: the causal LM with the LoRA, then head.json's recipe (head on the last token's final state).
    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    head = load_file(str(vllm / "head.safetensors"))["score.weight"]
    with torch.no_grad():
        states = [
            lm.base_model.model.model(**tok([t], return_tensors="pt")).last_hidden_state[0, -1] for t in PROBE
        ]
    np.testing.assert_allclose((torch.stack(states) @ head.T).numpy(), want, rtol=0, atol=ATOL)

    # The classifier's view: the same base as a sequence classifier with plain peft and the head copied in.
    plain = Path(export_adapter(src, "peft-lora", tmp_path / "plain")["output"])
    got, without = _peft_classifier_logits(plain, tiny_models["llama"], 3)
    assert np.abs(want - without).max() > 100 * ATOL
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_encoder_exports_as_peft_lora(adapters, tiny_models, tmp_path):
    src = adapters["bert"]
    out = Path(export_adapter(src, "peft-lora", tmp_path / "bert")["output"])
    keys = _lora_keys_only(out)
    assert all(k.startswith("base_model.model.bert.encoder.") for k in keys)
    assert set(load_file(str(out / "head.safetensors"))) == {"classifier.weight", "classifier.bias"}
    assert "pooler" in json.loads((out / "head.json").read_text())["applies_to"]
    got, without = _peft_classifier_logits(out, tiny_models["bert"], 3)
    want = peftkit.load(str(src), device="cpu").logits(PROBE)
    assert np.abs(want - without).max() > 100 * ATOL
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["lora-loud", "adalora-loud"])
def test_merged_model_answers_like_the_adapter(adapters, tmp_path, name):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = adapters[name]
    summary = export_adapter(src, "vllm", tmp_path / "merged", merge=True)
    out = Path(summary["output"])
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    labels = json.loads((src / "peftkit.json").read_text())["labels"]
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    np.testing.assert_allclose(
        _logits(model, tok, PROBE), peftkit.load(str(src), device="cpu").logits(PROBE), rtol=0, atol=ATOL
    )
    assert summary["merged_model"]["architecture"] == "LlamaForSequenceClassification"


def _as_8bit(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "peftkit.json").read_text())
    manifest["quant"] = "8bit"
    (dst / "peftkit.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(
    "name,to,merge,reason",
    [
        ("prefix", "peft-lora", False, "virtual key/value tokens"),
        ("bottleneck", "vllm", False, "insert new layers"),
        ("8bit", "peft-lora", True, "--merge"),
        ("bert", "vllm", False, "encoder"),
        ("lora", "onnx", False, "--to 'onnx'"),
    ],
)
def test_refusals_name_the_reason_and_write_nothing(adapters, tmp_path, name, to, merge, reason):
    src = _as_8bit(adapters["lora"], tmp_path / "lora-8bit") if name == "8bit" else adapters[name]
    with pytest.raises(PeftkitError, match=reason) as err:
        export_adapter(src, to, tmp_path / "out", merge=merge)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_8bit_adapter_still_exports_lora_weights_with_a_note(adapters, tmp_path):
    src = _as_8bit(adapters["lora"], tmp_path / "lora-8bit")
    summary = export_adapter(src, "peft-lora", tmp_path / "out")
    assert any("8-bit" in note for note in summary["notes"])


def test_existing_output_needs_overwrite_and_failures_leave_no_folder(adapters, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PeftkitError, match="--overwrite"):
        export_adapter(adapters["lora"], "peft-lora", out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(PeftkitError, match="inside the adapter folder"):
        export_adapter(adapters["lora"], "peft-lora", adapters["lora"] / "export")

    import peftkit.export as export_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "write_head", broken)
    with pytest.raises(RuntimeError):
        export_adapter(adapters["lora"], "peft-lora", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob(".fresh.tmp-*"))
    monkeypatch.undo()

    export_adapter(adapters["lora"], "peft-lora", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_cli_prints_json_and_warns_about_the_head_on_stderr(adapters, tmp_path):
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is invoked by name as under `peftkit`
    app.command("export")(export_cmd)
    runner = CliRunner()
    args = ["export", "--adapter", str(adapters["lora"]), "--to", "vllm", "--output", str(tmp_path / "v")]
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "vllm"
    assert (
        "head (score) is in head.safetensors, not in the LoRA" in result.stderr
        and "vLLM cannot serve it" in result.stderr
    )

    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: --output")
    refused = runner.invoke(
        app, ["export", "--adapter", str(adapters["prefix"]), "--to", "vllm", "--output", str(tmp_path / "p")]
    )
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr and "prefix" in refused.stderr
