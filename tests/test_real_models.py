"""The packaged real models (MiniLM-L6 encoder, SmolLM2-135M decoder) with every method, fp32 and 8-bit:
train a few steps on the real reviews -> adapter folder -> reload gives identical predictions -> predict CLI.

Marked slow (about 4 minutes in all on 2 CPU cores); `make test` runs them, `make test-fast` skips them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import peftkit
from peftkit.cli import app
from peftkit.config import load_config
from peftkit.methods import METHODS
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.conftest import seed_data

pytestmark = pytest.mark.slow
PROBE = ["这台电脑散热很好", "房间太小了", "这本书值得一读", "服务员态度很差，不会再来"]


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    # One cache for the module, so SmolLM2's GGUF is converted once (~20 s), not per test; with the fetched data.
    return seed_data(tmp_path_factory.mktemp("real-cache"))


@pytest.mark.parametrize("quant", ["none", pytest.param("8bit", marks=pytest.mark.bnb)])
# Full fine-tuning of the real models is left to `peftkit compare` (a 540 MB folder for SmolLM2); its save/reload,
# tied embeddings included, is checked on tiny models in test_methods.
@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if not s.full_model])
@pytest.mark.parametrize("model", ["minilm-l6", "smollm2-135m"])
def test_train_reload_predict(model, method, quant, tmp_path, real_cache, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(real_cache))
    out = tmp_path / "adapter"
    cfg = load_config(
        None,
        {
            "model.name": model,
            "method.name": method,
            "model.quant": quant,
            "output": str(out),
            "data.max_train_rows": 48,
            "data.max_eval_rows": 16,
            "data.max_length": 32,
            "train.max_steps": 3,
            "train.batch_size": 8,
        },
    )
    result = train(cfg, progress=False)
    reloaded = peftkit.load(str(out))
    # AdaLoRA included: training ends by cutting the pruned ranks in memory, as the saved folder has them.
    np.testing.assert_array_equal(reloaded.logits(PROBE), result.predictor.logits(PROBE))
    assert result.manifest.base.name == model and result.manifest.quant == quant

    pd.DataFrame({"text": PROBE}).to_csv(tmp_path / "new.csv", index=False)
    cli = CliRunner().invoke(
        app,
        [
            "predict",
            "--adapter",
            str(out),
            "--data",
            str(tmp_path / "new.csv"),
            "--output",
            str(tmp_path / "preds.csv"),
        ],
        catch_exceptions=False,
    )
    assert cli.exit_code == 0, cli.stderr
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert preds["prediction"].tolist() == [p.label for p in reloaded.predict(PROBE)]
    assert preds["text"].tolist() == PROBE


RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_trains_end_to_end(recipe, tmp_path, real_cache, monkeypatch):
    """Smoke run of each shipped recipe as written, cut to a few steps: data, model, method and task all resolve."""
    monkeypatch.setenv("PEFTKIT_CACHE", str(real_cache))
    cfg = load_config(
        recipe,
        {
            "train.max_steps": 2,
            "train.batch_size": 4,
            "data.max_train_rows": 24,
            "data.max_eval_rows": 12,
            "output": str(tmp_path / "adapter"),
        },
    )
    if cfg.segments is not None:  # a bank recipe: global + one adapter per segment value, a few steps each
        cfg = cfg.model_copy(update={"segments": cfg.segments.model_copy(update={"min_rows": 2})})
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_train_rows": 80})})
        bank = train_bank(cfg, progress=False).bank
        assert set(bank.segments) == set(cfg.segments.values or bank.segments) and bank.segments
        assert (tmp_path / "adapter" / "bank.json").is_file()
        return
    result = train(cfg, progress=False)
    assert result.manifest.task == cfg.task and result.manifest.train.steps == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
