"""Random-weight models at the widths of the bases peftkit ships, for tests/test_gpu.py and benchmarks/gpu/bench.py.

Kernels and memory behave as on the real bases only at their widths (int8 matmul tiles, attention head size, the
share of the embeddings in memory), so a shape keeps the real base's hidden size, heads, feed-forward width and
vocabulary, and only the number of layers is chosen. A lent GPU machine has no packaged model to borrow a tokenizer
from, and nothing can be downloaded there, so the tokenizer is a WordPiece built from a word list at run time: every
word of the rows below is one token, anything else falls back to letters.

    save_model(tmp / "llama", "smollm2-135m", layers=4)      # SmolLM2-135M's widths, 4 layers instead of 30
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from tests.conftest import FILLER as _FILLER
from tests.conftest import WORDS

SHAPES = {
    # the decoder peftkit ships (Llama architecture, tied embeddings)
    "smollm2-135m": dict(
        arch="llama", hidden=576, heads=9, kv_heads=3, ff=1536, layers=30, vocab=49152, tied=True
    ),
    # the default base: multilingual-e5-small (BERT; 250k vocabulary, so its embeddings are 82% of the weights)
    "e5-small": dict(arch="bert", hidden=384, heads=12, ff=1536, layers=12, vocab=250037),
    # a BERT-base-wide encoder (e5-base, MiniLM-L12's big siblings)
    "bert-base": dict(arch="bert", hidden=768, heads=12, ff=3072, layers=12, vocab=30522),
}

# The words of conftest's intent rows, plus a few, so the same phrases tokenize without [UNK]s.
LABEL_WORDS = WORDS
FILLER = [*_FILLER, "red", "size", "price", "color"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> list[str]:
    """Special tokens, the rows' words (label names included, for the decoders' verbalizer head), then letters,
    digits and their WordPiece continuations so any ASCII word can be spelt."""
    words = {w for phrases in LABEL_WORDS.values() for p in phrases for w in p.split()}
    words |= set(FILLER) | set(LABEL_WORDS) | {"please", "query", "passage"}
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,:;!?'-")
    return SPECIALS + sorted(words) + chars + [f"##{c}" for c in chars]


def word_tokenizer():
    """A BERT-style WordPiece tokenizer over `vocabulary()` ([CLS] text [SEP], lower-cased, [PAD] = 0)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def save_model(
    folder: Path,
    shape: str,
    *,
    layers: int | None = None,
    seed: int = 0,
    outliers: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight base of `shape` (SHAPES) with `word_tokenizer()` to `folder` and return it.

    Args:
        layers: transformer layers (default: the real base's).
        outliers: feature dimensions made systematic outliers, as in real LLMs (the LLM.int8 paper's observation):
            every layer norm's weight is 40 on the first `outliers` dims, so those dims of each linear's input reach
            |x| >> 6 and LLM.int8's threshold-6.0 decomposition computes them in 16-bit.
        dtype: the stored weights' dtype ("float32" or "bfloat16"; bf16 halves the folder of a 135M model).
    """
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    spec = SHAPES[shape]
    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    n_layers = layers or spec["layers"]
    if spec["arch"] == "bert":
        cfg = BertConfig(
            vocab_size=spec["vocab"],
            hidden_size=spec["hidden"],
            num_hidden_layers=n_layers,
            num_attention_heads=spec["heads"],
            intermediate_size=spec["ff"],
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = BertModel(cfg)
        norms = [m for n, m in model.named_modules() if n.endswith("LayerNorm")]
    else:
        cfg = LlamaConfig(
            vocab_size=spec["vocab"],
            hidden_size=spec["hidden"],
            intermediate_size=spec["ff"],
            num_hidden_layers=n_layers,
            num_attention_heads=spec["heads"],
            num_key_value_heads=spec["kv_heads"],
            max_position_embeddings=2048,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            tie_word_embeddings=spec.get("tied", False),
        )
        model = LlamaForCausalLM(cfg)
        norms = [m for n, m in model.named_modules() if n.endswith("layernorm")]
    if outliers:
        with torch.no_grad():
            for norm in norms:
                norm.weight[:outliers] = 40.0
    model.to(getattr(torch, dtype)).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def rows(n: int, *, words: int = 8, seed: int = 0) -> pd.DataFrame:
    """`n` unique labelled rows (text, label, platform): the label's phrase among `words` filler words."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        label = rng.choice(list(LABEL_WORDS))
        text = [rng.choice(FILLER) for _ in range(words)]
        text.insert(rng.randrange(len(text) + 1), rng.choice(LABEL_WORDS[label]))
        line = " ".join(text) + f" {len(out)}"
        if line not in seen:
            seen.add(line)
            out.append({"text": line, "label": label, "platform": rng.choice(["app", "web"])})
    return pd.DataFrame(out)
