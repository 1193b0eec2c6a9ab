"""Adapter folders and a bank written by peftkit before the redesign (commit 74ff3c6) still load and predict the same.

tests/fixtures/before-redesign/ was written by that commit's `peftkit.train.train` and `peftkit.segments.train_bank`
on conftest's tiny BERT (seed 0) and 160 `intent_rows`, 6 steps each; expected.json holds the logits that code
computed for four texts. The manifests name the base by the absolute path it had then: each test passes this
session's tiny BERT, whose weights hash is checked against the recorded one first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import peftkit
from peftkit.artifacts.bank_file import read_bank_file
from peftkit.artifacts.manifest import read_manifest
from peftkit.artifacts.names import BANK_FILE, MANIFEST

FIXTURES = Path(__file__).parent / "fixtures" / "before-redesign"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def base(tiny_models) -> Path:
    from peftkit import models

    folder = tiny_models["bert"]
    assert models.weights_hash(folder / "model.safetensors") == EXPECTED["base_sha256"], (
        "conftest's tiny BERT no longer has the weights the fixtures were trained on"
    )
    return folder


@pytest.mark.parametrize("method", ["lora", "adalora", "bottleneck"])
def test_old_adapter_reloads_with_identical_predictions(base, method):
    folder = FIXTURES / f"adapter-{method}"
    model = peftkit.load(str(folder), base=str(base))
    np.testing.assert_allclose(
        model.logits(EXPECTED["texts"]), EXPECTED["logits"][f"adapter-{method}"], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "name", ["adapter-lora", "adapter-adalora", "adapter-bottleneck", "bank/global", "bank/app"]
)
def test_old_manifest_round_trips_unchanged(name):
    folder = FIXTURES / name
    assert read_manifest(folder).to_json() == json.loads((folder / MANIFEST).read_text())


def test_old_bank_opens_and_routes_as_before(base, tmp_path):
    bank_folder = shutil.copytree(FIXTURES / "bank", tmp_path / "bank")
    stored = json.loads((bank_folder / BANK_FILE).read_text())
    assert read_bank_file(bank_folder).to_json() == stored
    # The one machine-specific field: where the base lived when the bank was written.
    stored["base"]["name"] = str(base)
    (bank_folder / BANK_FILE).write_text(json.dumps(stored))
    bank = peftkit.AdapterBank.open(bank_folder)
    want = EXPECTED["bank"]
    assert bank.resolve_all(want["segments"]) == want["adapters"]
    np.testing.assert_allclose(
        bank.logits(EXPECTED["texts"], want["adapters"]), want["logits"], rtol=0, atol=1e-6
    )


# -- written by c7302b0, the last commit before banks of questions (tests/fixtures/before-questions/README.md) ------

BEFORE_QUESTIONS = Path(__file__).parent / "fixtures" / "before-questions"
EXPECTED_Q = json.loads((BEFORE_QUESTIONS / "expected.json").read_text())


@pytest.mark.parametrize("name", ["adapter-prefix", "adapter-ordinal-template"])
def test_adapter_from_before_questions_reloads_with_identical_logits(base, name):
    model = peftkit.load(str(BEFORE_QUESTIONS / name), base=str(base))
    np.testing.assert_allclose(
        model.logits(EXPECTED_Q["texts"]), EXPECTED_Q["logits"][name], rtol=0, atol=1e-6
    )
    folder = BEFORE_QUESTIONS / name
    assert read_manifest(folder).to_json() == json.loads((folder / MANIFEST).read_text())


def _bank_here(tmp_path: Path, base: Path, source: Path = BEFORE_QUESTIONS / "bank-bottleneck") -> Path:
    """A copy of the bank fixture `source` whose bank.json names this session's tiny base."""
    folder = shutil.copytree(source, tmp_path / "bank")
    stored = json.loads((folder / BANK_FILE).read_text())
    assert read_bank_file(folder).to_json() == stored
    stored["base"]["name"] = str(base)  # where the base lived when the bank was written
    (folder / BANK_FILE).write_text(json.dumps(stored))
    return folder


def test_bank_from_before_questions_opens_as_one_question_and_answers_as_before(base, tmp_path):
    bank = peftkit.AdapterBank.open(_bank_here(tmp_path, base))
    want = EXPECTED_Q["bank"]
    assert list(bank.questions) == ["default"]
    assert bank.resolve_all(want["segments"]) == want["adapters"]
    np.testing.assert_allclose(
        bank.logits(EXPECTED_Q["texts"], want["adapters"]), want["logits"], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("name", ["adapter-prefix", "adapter-ordinal-template", "bank-bottleneck"])
def test_prediction_files_from_before_questions_are_written_again_identically(base, tmp_path, name):

    if name.startswith("bank"):
        kwargs = {"bank": _bank_here(tmp_path, base)}
    else:
        kwargs = {"adapter": BEFORE_QUESTIONS / name, "base": str(base)}
    _assert_written_again(BEFORE_QUESTIONS, name, kwargs, tmp_path)


def _assert_written_again(fixtures: Path, name: str, kwargs: dict, tmp_path: Path) -> None:
    """`predict_table` on the fixtures' records.csv writes predictions-<name>.csv again: every column equal, the
    probabilities within 1e-6."""
    import pandas as pd

    from peftkit.inference.table import predict_table

    frame = predict_table(str(fixtures / "records.csv"), **kwargs).frame
    frame.to_csv(tmp_path / "now.csv", index=False)
    now = pd.read_csv(tmp_path / "now.csv", dtype=str)
    then = pd.read_csv(fixtures / f"predictions-{name}.csv", dtype=str)
    assert list(now.columns) == list(then.columns)
    probs = [c for c in then.columns if c.startswith("prob_")]
    pd.testing.assert_frame_equal(now.drop(columns=probs), then.drop(columns=probs))
    np.testing.assert_allclose(now[probs].astype(float), then[probs].astype(float), rtol=0, atol=1e-6)


# -- written with decisions, profiles and versions (tests/fixtures/decisions-and-versions/README.md) -----------------

DECIDED = Path(__file__).parent / "fixtures" / "decisions-and-versions"
EXPECTED_D = json.loads((DECIDED / "expected.json").read_text())


def test_a_decided_adapter_reloads_with_its_threshold_and_temperature(base):
    folder = DECIDED / "adapter-decided"
    model = peftkit.load(str(folder), base=str(base))
    want = EXPECTED_D["adapter-decided"]
    texts = EXPECTED_D["texts"]
    np.testing.assert_allclose(model.logits(texts), want["logits"], rtol=0, atol=1e-6)
    predictions = model.predict(texts)
    assert [p.label for p in predictions] == want["labels"]
    for p, probs in zip(predictions, want["probabilities"]):
        assert p.probabilities == pytest.approx(probs, abs=1e-6)
    manifest = read_manifest(folder)
    assert manifest.to_json() == json.loads((folder / MANIFEST).read_text())
    assert manifest.threshold["positive"] == "convert" and manifest.calibration["method"] == "temperature"


def test_a_versioned_bank_answers_with_the_promoted_version_as_before(base, tmp_path):
    from peftkit.artifacts.versions import history, production

    folder = _bank_here(tmp_path, base, DECIDED / "bank-versioned")
    assert production(folder, "app") == 2
    assert [(h["action"], h["to"]) for h in history(folder) if h["adapter"] == "app"][-1] == ("promote", 2)
    bank = peftkit.AdapterBank.open(folder)
    want = EXPECTED_D["bank"]
    texts = EXPECTED_D["texts"][:4]
    assert bank.resolve_all(want["segments"]) == want["adapters"]
    np.testing.assert_allclose(bank.logits(texts, want["adapters"]), want["logits"], rtol=0, atol=1e-6)
    assert [p.version for p in bank.predict(texts, want["segments"])] == want["versions"]


@pytest.mark.parametrize("name", ["adapter-decided", "bank-versioned"])
def test_prediction_files_from_decided_and_versioned_folders_are_written_again_identically(
    base, tmp_path, name
):

    if name.startswith("bank"):
        kwargs = {"bank": _bank_here(tmp_path, base, DECIDED / "bank-versioned")}
    else:
        kwargs = {"adapter": DECIDED / name, "base": str(base)}
    _assert_written_again(DECIDED, name, kwargs, tmp_path)
