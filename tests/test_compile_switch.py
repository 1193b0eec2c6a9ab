"""train.compile: torch.compile reaches Trainer, and a machine without a C++ compiler trains eagerly instead."""

from __future__ import annotations

import shutil

from peftkit.config import load_config
from peftkit.training.hf_trainer import training_arguments
from peftkit.training.plan import make_plan


def _args(tmp_path, **overrides):
    cfg = load_config(None, {"output": str(tmp_path / "out"), **overrides})
    return training_arguments(cfg, make_plan(100, cfg, 1, "random"), tmp_path / "ckpt", "cpu", progress=False)


def test_compile_is_off_by_default_and_on_when_asked(tmp_path):
    assert _args(tmp_path).torch_compile is False
    has_compiler = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    assert _args(tmp_path, **{"train.compile": True}).torch_compile is has_compiler


def test_without_a_cpp_compiler_compile_falls_back_to_eager(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with caplog.at_level("WARNING", logger="peftkit"):
        args = _args(tmp_path, **{"train.compile": True})
    assert args.torch_compile is False
    assert "no C++ compiler" in caplog.text
