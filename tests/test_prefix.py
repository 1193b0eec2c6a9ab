"""peftkit's own prefix tuning, checked against an independent reference: transformers' KV-cache path.

Feeding the same prefix to the backbone as a prefilled `DynamicCache` (what peft does where transformers still
threads a cache through the classification forward) must give the same hidden states as injecting it at the
attention call. The cache path still exists on the backbones (``past_key_values``/``cache``), so this runs on
every transformers version, including those where peft's own prefix tuning fails.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DynamicCache,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from peftkit.errors import PeftkitError
from peftkit.methods.base import MethodContext
from peftkit.methods.prefix import PrefixOptions, apply, attach, plain_peft_runs_prefix, save

P = 4  # virtual tokens
IDS = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, 0, 0]])  # row 1 right-padded (pad id 0)
MASK = (IDS != 0).long()


def tiny(arch: str, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=64,
        )
        return BertForSequenceClassification(cfg), ("classifier",)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: the prefix has the kv heads' shape
        intermediate_size=64,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg), ("score",)


def prefixed(arch: str, **opts):
    base, heads = tiny(arch)
    model = apply(base, PrefixOptions(num_virtual_tokens=P, **opts), MethodContext(arch, heads))
    return model.eval()


def reference_hidden(model, ids, mask) -> torch.Tensor:
    """Last hidden state with the prefix handed over as a prefilled KV cache, positions after the prefix."""
    hf = model.model
    hf.config._attn_implementation = "sdpa"  # the stock attention, no prefix injection
    lay = model.layout
    with torch.no_grad():
        table = model.prompt_encoder[model.active_adapter]()  # (P, layers * 2 * heads * head_dim)
    kv = table.view(P, lay.layers, 2, lay.heads, lay.head_dim).permute(1, 2, 3, 0, 4)  # (L, 2, H, P, D)
    cache = DynamicCache(config=hf.config)
    for layer, (k, v) in enumerate(kv):
        batch = (ids.shape[0], -1, -1, -1)
        cache.update(k.unsqueeze(0).expand(*batch), v.unsqueeze(0).expand(*batch), layer)
    backbone = getattr(hf, hf.base_model_prefix)
    full_mask = torch.cat([torch.ones(ids.shape[0], P, dtype=mask.dtype), mask], dim=1)
    with torch.no_grad():
        return backbone(input_ids=ids, attention_mask=full_mask, past_key_values=cache).last_hidden_state


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_at_the_attention_call_matches_the_kv_cache_path(arch, projection):
    model = prefixed(arch, prefix_projection=projection)
    with torch.no_grad():
        ours = model(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states[-1]
    expected = reference_hidden(model, IDS, MASK)
    real = MASK.bool()  # padded positions carry no meaning
    torch.testing.assert_close(ours[real], expected[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_padded_row_answers_as_it_does_alone(arch):
    model = prefixed(arch)
    with torch.no_grad():
        batch = model(input_ids=IDS, attention_mask=MASK).logits
        alone = model(input_ids=IDS[1:, :3], attention_mask=MASK[1:, :3]).logits
    torch.testing.assert_close(batch[1:], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_prefix_steers_the_output_and_takes_gradients(arch):
    model = prefixed(arch)
    with torch.no_grad():
        before = model(input_ids=IDS, attention_mask=MASK).logits
        model.prompt_encoder["default"].embedding.weight.mul_(3.0)
        after = model(input_ids=IDS, attention_mask=MASK).logits
    assert not torch.allclose(before, after), "the prefix does not reach the output"
    model.train()
    model(input_ids=IDS, attention_mask=MASK).logits.sum().backward()
    grad = model.prompt_encoder["default"].embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with_grad = {n.split(".")[1] for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {
        "default",
        "classifier" if arch == "bert" else "score",
    }  # the prefix and the head only


def test_bf16_base_keeps_a_float32_prefix_and_reloads_identically(tmp_path):
    base, heads = tiny("llama")
    model = apply(base.to(torch.bfloat16), PrefixOptions(num_virtual_tokens=P), MethodContext("llama", heads))
    assert model.prompt_encoder["default"].embedding.weight.dtype == torch.float32
    with torch.no_grad():
        before = model.eval()(input_ids=IDS, attention_mask=MASK).logits
    save(model, tmp_path / "a")
    again, _ = tiny("llama")
    with torch.no_grad():
        after = attach(again.to(torch.bfloat16), tmp_path / "a")(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_folders_written_by_plain_peft_load(arch, tmp_path):
    """Prefix adapters trained before peftkit owned the mechanism (peft wrote them) keep working."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    base, heads = tiny(arch)
    peft_model = get_peft_model(
        base,
        PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=P, modules_to_save=list(heads)),
    )
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    fresh, _ = tiny(arch)
    loaded = attach(fresh, tmp_path / "peft")
    table = peft_model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(loaded.prompt_encoder["default"].embedding.weight, table.detach())
    head = dict(peft_model.named_parameters())
    saved_head = {n for n in head if "modules_to_save.default" in n}
    assert saved_head and loaded.head_names == heads
    with torch.no_grad():
        ours = loaded(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states[-1]
    real = MASK.bool()
    torch.testing.assert_close(ours[real], reference_hidden(loaded, IDS, MASK)[real], rtol=0, atol=1e-5)


def test_a_prefix_for_another_model_size_is_refused(tmp_path):
    save(prefixed("llama"), tmp_path / "a")
    deeper, _ = tiny("llama", layers=3)
    with pytest.raises(
        PeftkitError, match="made for 2 attention layers x 2 key/value heads x 8, this base has 3"
    ):
        attach(deeper, tmp_path / "a")


def test_plain_peft_support_is_detected():
    """transformers 5.24 dropped past_key_values from the classification forwards (BERT's backbone renamed it)."""
    import transformers
    from packaging.version import Version

    base, _ = tiny("bert")
    assert plain_peft_runs_prefix(base) is (Version(transformers.__version__) < Version("5.24"))


def test_the_eager_prefix_attention_matches_sdpa():
    """Over a bf16 base on CPU the prefix attention is computed eagerly; in float32 it must equal SDPA's."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from peftkit.methods.prefix_attention import eager_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, layer_idx=0, is_causal=False, training=False)
    query = torch.randn(2, 4, 5, 8)
    key, value = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.3
    mask[..., 0] = True  # every query sees at least one key (the prefix's first column)
    for m in (mask, torch.where(mask, 0.0, torch.finfo(torch.float32).min), None):
        ours, _ = eager_attention(module, query, key, value, m, scaling=0.3)
        theirs, _ = sdpa_attention_forward(module, query, key, value, m, scaling=0.3, is_causal=False)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
