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
