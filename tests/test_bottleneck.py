"""Bottleneck adapters on tiny random Llama / BERT classifiers built from config (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from peftkit.errors import PeftkitError
from peftkit.methods import METHODS
from peftkit.methods.base import MethodContext
from peftkit.methods.bottleneck import (
    SPEC,
    BottleneckLayer,
    BottleneckModel,
    BottleneckOptions,
    apply,
    attach,
    describe,
    save,
)

WIDTH = 8  # bottleneck_dim
HIDDEN = 32
HEADS = {"llama": ("score",), "bert": ("classifier",)}
HEAD_PARAMS = {"llama": HIDDEN * 3, "bert": HIDDEN * 3 + 3}  # Llama's score has no bias
EXPECTED_TARGETS = {  # placement -> adapted modules, per architecture
    ("llama", "pfeiffer"): ["model.layers.{i}.mlp.down_proj"],
    ("llama", "houlsby"): ["model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.down_proj"],
    ("bert", "pfeiffer"): ["bert.encoder.layer.{i}.output.dense"],
    ("bert", "houlsby"): [
        "bert.encoder.layer.{i}.attention.output.dense",
        "bert.encoder.layer.{i}.output.dense",
    ],
}
CASES = [(arch, placement) for arch in HEADS for placement in ("pfeiffer", "houlsby")]


def llama_config(hidden: int = HIDDEN) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        num_labels=3,
    )


def build(arch: str, seed: int = 0, hidden: int = HIDDEN):
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForSequenceClassification(llama_config(hidden)).eval()
    config = BertConfig(
        vocab_size=128,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def adapt(base, arch: str, placement: str = "pfeiffer", **options) -> BottleneckModel:
    opts = BottleneckOptions(bottleneck_dim=WIDTH, placement=placement, **options)
    return apply(base, opts, MethodContext(model_type=base.config.model_type, head_names=HEADS[arch]))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 128, (8, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    input_ids[:4, -3:], attention_mask[:4, -3:] = 0, 0  # right padding on half the rows
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.arange(8) % 3}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def loss(model, batch) -> float:
    with torch.no_grad():
        return model(**batch).loss.item()


def train(model, batch, steps: int = 10, lr: float = 1e-2) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def trainer_args(folder, **overrides):
    from transformers import TrainingArguments

    settings = dict(
        max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True, report_to=[]
    )
    return TrainingArguments(
        output_dir=str(folder), save_strategy="no", logging_strategy="no", **settings | overrides
    )


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("arch", "placement"), CASES)
def test_starts_exactly_as_the_base_with_adapters_where_expected(arch, placement, batch):
    base = build(arch)
    before = logits(base, batch)
    model = adapt(base, arch, placement)
    assert torch.equal(logits(model, batch), before)  # zero-initialised up-projection
    expected = [t.format(i=i) for i in range(2) for t in EXPECTED_TARGETS[arch, placement]]
    assert sorted(model.adapted_modules) == sorted(expected)
    wrapped = sorted(n for n, m in model.model.named_modules() if isinstance(m, BottleneckLayer))
    assert wrapped == sorted(expected)


@pytest.mark.parametrize(("arch", "placement"), CASES)
def test_only_adapters_and_head_train(arch, placement):
    model = adapt(build(arch), arch, placement)
    params = trainable(model)
    n_adapters = 2 * len(EXPECTED_TARGETS[arch, placement])
    per_adapter = 2 * HIDDEN * WIDTH + WIDTH + HIDDEN  # down (d->m, bias m) + up (m->d, bias d)
    assert sum(p.numel() for p in params.values()) == n_adapters * per_adapter + HEAD_PARAMS[arch]
    head = HEADS[arch][0]
    for name, p in params.items():
        assert ".adapters.default." in name or name.startswith(f"model.{head}."), name
        assert p.dtype == torch.float32
    assert len(params) < len(list(model.parameters()))


@pytest.mark.parametrize(("arch", "placement"), CASES)
def test_training_moves_the_logits_and_lowers_the_loss(arch, placement, batch):
    model = adapt(build(arch), arch, placement)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before_logits, before_loss = logits(model, batch), loss(model, batch)
    train(model, batch)
    assert not torch.allclose(logits(model, batch), before_logits)
    assert loss(model, batch) < before_loss
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    ups = [p for n, p in model.named_parameters() if n.endswith("up.weight")]
    assert ups and all(p.abs().sum() > 0 for p in ups)


@pytest.mark.parametrize(("arch", "placement"), CASES)
def test_save_then_attach_reproduces_the_trained_model(arch, placement, batch, tmp_path):
    model = adapt(build(arch), arch, placement)
    train(model, batch, steps=3)
    save(model, tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peftkit_method"] == "bottleneck" and "peft_type" not in config
    assert config["model_type"] == arch and config["head_names"] == list(HEADS[arch])
    assert config["adapted_modules"] == list(model.adapted_modules)
    assert config["options"]["placement"] == placement
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    # keyed by path in the HF model: Trainer resume (peftkit.training.hf_trainer) loads the file straight into it
    assert set(tensors) == {n.removeprefix("model.") for n in trainable(model)}
    assert model.model.load_state_dict(tensors, strict=False).unexpected_keys == []

    attached = attach(build(arch), tmp_path)
    assert isinstance(attached, BottleneckModel) and not attached.training
    assert not any(p.requires_grad for p in attached.parameters())
    assert torch.equal(logits(attached, batch), logits(model, batch))
    n = len(EXPECTED_TARGETS[arch, placement]) * 2
    assert describe(tmp_path) == {
        "placement": placement,
        "bottleneck_dim": WIDTH,
        "non_linearity": "relu",
        "adapted_modules": n,
    }


def test_bf16_base_keeps_float32_adapters(batch, tmp_path):
    base = build("llama").to(torch.bfloat16)
    before = logits(base, batch)
    model = adapt(base, "llama", "houlsby", non_linearity="silu")
    out = logits(model, batch)
    assert out.dtype == torch.bfloat16 and torch.equal(out, before)
    assert all(p.dtype == torch.float32 for n, p in trainable(model).items() if ".adapters." in n)
    before_loss = loss(model, batch)
    train(model, batch)
    assert loss(model, batch) < before_loss
    save(model, tmp_path)
    attached = attach(build("llama").to(torch.bfloat16), tmp_path)
    assert torch.equal(logits(attached, batch), logits(model, batch))


def test_custom_targets_and_unknown_architecture(batch):
    base = build("llama")
    before = logits(base, batch)
    ctx = MethodContext(model_type="mystery", head_names=("score",))
    with pytest.raises(PeftkitError, match="method.target_modules"):
        apply(base, BottleneckOptions(), ctx)
    # k_proj outputs num_key_value_heads * head_dim = 16 features: the adapter follows the layer's width
    model = apply(
        base, BottleneckOptions(bottleneck_dim=WIDTH, target_modules=[r"model\.layers\.1\..*k_proj"]), ctx
    )
    assert model.adapted_modules == ("model.layers.1.self_attn.k_proj",)
    assert model.model.model.layers[1].self_attn.k_proj.adapters["default"].up.weight.shape == (16, WIDTH)
    assert torch.equal(logits(model, batch), before)
    with pytest.raises(PeftkitError, match="already has bottleneck adapters"):
        apply(base, BottleneckOptions(), ctx)


@pytest.mark.parametrize(
    ("targets", "message"),
    [(["nothing_like_this"], "matches"), (["mlp"], "not a Linear"), (["score"], "task head")],
)
def test_bad_targets_are_refused_before_touching_the_model(targets, message):
    base = build("llama")
    with pytest.raises(PeftkitError, match=message):
        adapt(base, "llama", target_modules=targets)
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())
    assert all(p.requires_grad for p in base.parameters())


def test_options_are_validated():
    with pytest.raises(ValidationError):
        BottleneckOptions(bottleneck_dim=0)
    with pytest.raises(ValidationError, match="not a valid regex"):
        BottleneckOptions(target_modules=["layers.(0"])
    with pytest.raises(ValidationError):
        BottleneckOptions(reduction_factor=16)
    assert METHODS["bottleneck"] is SPEC and SPEC.options is BottleneckOptions and not SPEC.peft_native


def test_hf_trainer_with_activation_checkpointing_trains_every_adapter(batch, tmp_path):
    from transformers import Trainer

    model = adapt(build("bert"), "bert", "houlsby")
    seen = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(set(kwargs)), with_kwargs=True
    )
    downs = {n: p.detach().clone() for n, p in trainable(model).items() if n.endswith("down.weight")}
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["token_type_ids"][:, 6:] = 1  # sentence pairs: Trainer must not drop this column
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
    Trainer(
        model=model, args=trainer_args(tmp_path, activation_checkpointing=True), train_dataset=rows
    ).train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert seen and all({"input_ids", "attention_mask", "token_type_ids", "labels"} <= keys for keys in seen)
    assert len(downs) == 4 and all(
        not torch.equal(p, downs[n]) for n, p in model.named_parameters() if n in downs
    )


@pytest.fixture
def saved_llama(batch, tmp_path):
    model = adapt(build("llama"), "llama", "houlsby")
    train(model, batch, steps=2)
    save(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def test_attach_refuses_other_architectures_and_sizes(saved_llama):
    with pytest.raises(PeftkitError, match="trained on a 'llama' model, this base is 'bert'"):
        attach(build("bert"), saved_llama)
    with pytest.raises(PeftkitError, match=r"has shape \(8, 32\) in the file, \(8, 48\) in this base"):
        attach(build("llama", hidden=48), saved_llama)


def test_attach_is_strict_about_keys(saved_llama):
    path = saved_llama / "adapter_model.safetensors"
    tensors = load_file(path)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, path)
    with pytest.raises(PeftkitError, match=f"missing \\['{dropped}'\\]"):
        attach(build("llama"), saved_llama)
    save_file({**tensors, "model.layers.0.extra": torch.zeros(2)}, path)
    with pytest.raises(PeftkitError, match=r"unexpected \['model.layers.0.extra'\]"):
        attach(build("llama"), saved_llama)


def test_attach_refuses_pickles_and_foreign_folders(saved_llama, tmp_path):
    (saved_llama / "adapter_model.safetensors").rename(saved_llama / "adapter_model.bin")
    (saved_llama / "adapter_model.bin").write_bytes(b"not even a pickle")  # must not be opened at all
    with pytest.raises(PeftkitError, match="adapter_model.safetensors only"):
        attach(build("llama"), saved_llama)
    peft_folder = tmp_path / "lora"
    peft_folder.mkdir()
    (peft_folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    save_file({"x": torch.zeros(1)}, peft_folder / "adapter_model.safetensors")
    with pytest.raises(PeftkitError, match="not a peftkit bottleneck adapter"):
        attach(build("llama"), peft_folder)


# --- 8-bit base (bitsandbytes int8, runs on CPU with bnb >= 0.47) ---


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    build("llama").save_pretrained(folder)
    return folder


def load_8bit(folder):
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["score"])
    return AutoModelForSequenceClassification.from_pretrained(folder, quantization_config=quantization).eval()


@pytest.mark.bnb
def test_8bit_base_trains_float32_adapters(llama_dir, batch):
    from bitsandbytes.nn import Linear8bitLt

    base = load_8bit(llama_dir)
    before = logits(base, batch)
    model = adapt(base, "llama", "houlsby")
    assert torch.equal(logits(model, batch), before)
    wrapped = [m for m in model.modules() if isinstance(m, BottleneckLayer)]
    assert len(wrapped) == 4 and all(isinstance(m.base_layer, Linear8bitLt) for m in wrapped)
    assert all(m.base_layer.weight.dtype == torch.int8 for m in wrapped)
    assert all(p.dtype == torch.float32 for p in trainable(model).values())

    model.train()
    model(**batch).loss.backward()
    ups = {n: p.grad for n, p in model.named_parameters() if n.endswith("up.weight")}
    assert len(ups) == 4 and all(
        g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in ups.values()
    )
    model.zero_grad()
    before_loss = loss(model, batch)
    train(model, batch)
    assert loss(model, batch) < before_loss
    assert all(p.dtype == torch.float32 for p in trainable(model).values())


@pytest.mark.bnb
def test_8bit_save_then_attach_reproduces_logits(llama_dir, batch, tmp_path):
    model = adapt(load_8bit(llama_dir), "llama", "houlsby")
    train(model, batch, steps=3)
    save(model, tmp_path)
    attached = attach(load_8bit(llama_dir), tmp_path)
    assert torch.equal(logits(attached, batch), logits(model, batch))


@pytest.mark.bnb
def test_8bit_model_is_accepted_by_hf_trainer(llama_dir, batch, tmp_path):
    """Trainer refuses a bare quantized PreTrainedModel; the BottleneckModel wrapper must pass and train."""
    from transformers import Trainer

    args = trainer_args(tmp_path)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))]
    with pytest.raises(ValueError, match="purely quantized"):
        Trainer(model=load_8bit(llama_dir), args=args, train_dataset=rows)
    model = adapt(load_8bit(llama_dir), "llama")
    ups = {n: p.detach().clone() for n, p in trainable(model).items() if n.endswith("up.weight")}
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert result.global_step == 3 and result.training_loss > 0
    assert all(not torch.equal(p, ups[n]) for n, p in model.named_parameters() if n in ups)
