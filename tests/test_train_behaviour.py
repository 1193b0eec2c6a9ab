"""Training behaviour beyond the method matrix: resume, the NaN guard, seeds, an atomic output folder."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import TrainerCallback

from peftkit.config import load_config
from peftkit.errors import NonFiniteLossError
from peftkit.tasks import TASKS
from peftkit.training.loop import train
from peftkit.training.plan import checkpoint_dir
from tests.conftest import intent_rows

PROBE = ["buy now the blue shirt", "just browsing phones", "compare prices of laptop gift"]


def cfg_for(tiny_models, tmp_path, out: str, **extra):
    data = tmp_path / "intent.csv"
    if not data.exists():
        intent_rows(120).to_csv(data, index=False)
    return load_config(
        None,
        {
            "model.name": str(tiny_models["llama"]),
            "data.train": str(data),
            "output": str(tmp_path / out),
            "train.max_steps": 6,
            "train.batch_size": 8,
            "train.save_steps": 2,
            **extra,
        },
    )


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_continues_and_matches_an_uninterrupted_run(tiny_models, tmp_path):
    straight = train(cfg_for(tiny_models, tmp_path, "straight"), progress=False)
    cfg = cfg_for(tiny_models, tmp_path, "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[StopAt(3)])
    assert not (tmp_path / "resumed").exists(), "an interrupted run must not leave an adapter folder"
    assert (checkpoint_dir(tmp_path / "resumed") / "checkpoint-2").is_dir()
    resumed = train(cfg, resume=True, progress=False)
    assert resumed.manifest.train.steps == 6
    np.testing.assert_allclose(
        resumed.predictor.logits(PROBE), straight.predictor.logits(PROBE), rtol=0, atol=1e-6
    )
    assert not checkpoint_dir(tmp_path / "resumed").exists(), (
        "checkpoints are removed once the adapter is written"
    )


def test_same_seed_same_adapter_other_seed_differs(tiny_models, tmp_path):
    a = train(cfg_for(tiny_models, tmp_path, "a"), progress=False).predictor.logits(PROBE)
    b = train(cfg_for(tiny_models, tmp_path, "b"), progress=False).predictor.logits(PROBE)
    c = train(cfg_for(tiny_models, tmp_path, "c", **{"train.seed": 7}), progress=False).predictor.logits(
        PROBE
    )
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_nan_loss_stops_with_last_good_weights(tiny_models, tmp_path, monkeypatch):
    task = TASKS["classification"]
    real_loss, calls = task.loss, {"n": 0}

    def poisoned(logits, labels, class_weights=None):
        calls["n"] += 1
        loss = real_loss(logits, labels, class_weights)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(task, "loss", poisoned)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 4.*last good weights"
    ):
        train(cfg_for(tiny_models, tmp_path, "nan"), progress=False)
    last_good = checkpoint_dir(tmp_path / "nan") / "last-good"
    from safetensors.torch import load_file

    weights = load_file(str(last_good / "adapter_model.safetensors"))
    assert weights and all(t.isfinite().all() for t in weights.values())
    assert not (tmp_path / "nan").exists()


def test_gradient_checkpointing_trains_the_same_weights(tiny_models, tmp_path):
    plain = train(cfg_for(tiny_models, tmp_path, "plain"), progress=False).predictor.logits(PROBE)
    ckpt = train(
        cfg_for(tiny_models, tmp_path, "gc", **{"train.gradient_checkpointing": True}), progress=False
    )
    np.testing.assert_allclose(ckpt.predictor.logits(PROBE), plain, rtol=0, atol=1e-5)


def test_ordinal_and_regression_runs_report_their_metrics(tiny_models, tmp_path):
    import peftkit

    ordinal = train(
        cfg_for(
            tiny_models, tmp_path, "ordinal", task="ordinal", **{"data.labels": ["weak", "medium", "strong"]}
        ),
        progress=False,
    )
    assert ordinal.manifest.labels == ["weak", "medium", "strong"] and ordinal.manifest.num_outputs == 2
    assert {"accuracy", "mae", "spearman"} <= set(ordinal.metrics)
    pred = peftkit.load(str(ordinal.output)).predict(PROBE)
    assert all(set(p.probabilities) == {"weak", "medium", "strong"} for p in pred)

    regression = train(
        cfg_for(tiny_models, tmp_path, "regression", task="regression", **{"data.label_column": "score"}),
        progress=False,
    )
    assert regression.manifest.labels is None and regression.manifest.num_outputs == 1
    assert {"mae", "rmse", "spearman"} <= set(regression.metrics)
    scores = [p.score for p in peftkit.load(str(regression.output)).predict(PROBE)]
    assert all(isinstance(s, float) for s in scores)


def test_a_relative_base_path_is_recorded_absolute(tiny_models, tmp_path, monkeypatch):
    import os

    import peftkit

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_models["bert"], tmp_path)
    result = train(cfg_for(tiny_models, tmp_path, "rel", **{"model.name": relative}), progress=False)
    assert result.manifest.base.name == str(tiny_models["bert"].resolve())
    monkeypatch.chdir(tmp_path.parent)  # elsewhere, the manifest still finds its base
    np.testing.assert_array_equal(
        peftkit.load(str(result.output)).logits(PROBE), result.predictor.logits(PROBE)
    )
