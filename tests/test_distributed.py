"""Data-parallel training under torchrun with 2 CPU processes (gloo): the same CLI, one adapter written by rank 0,
loadable and comparable to a single-process run with the same global batch; and an adapter bank trained the same way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import peftkit
from peftkit.inference.bank import AdapterBank
from tests.conftest import free_port, intent_rows

PROBE = ["buy now the blue shirt", "just browsing phones", "compare prices of laptop gift"]


def run_cli(args: list[str], procs: int) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, "-m", "peftkit", *args]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        cmd = [*launcher, "--master-port", str(free_port()), "-m", "peftkit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def train_args(model: Path, data: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--max-steps",
        "60",
        "--batch-size",
        str(batch_size),
        "--lr",
        "0.05",
        "--set",
        "train.logging_steps=10",
        "--json",
        *extra,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "intent.csv"
    intent_rows(240).to_csv(path, index=False)
    return path


def test_two_processes_write_one_adapter_like_a_single_process_run(tiny_models, data, tmp_path):
    one = run_cli(train_args(tiny_models["llama"], data, tmp_path / "one", 8), procs=1)
    two = run_cli(
        train_args(tiny_models["llama"], data, tmp_path / "two", 4), procs=2
    )  # same global batch: 2 x 4
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)  # exactly one JSON document: only rank 0 prints its result
    assert summary["output"] == str(tmp_path / "two") and summary["adapter_bytes"] > 0
    assert two.stderr.count("peftkit: method: lora") == 1  # and only rank 0 logs

    m1 = json.loads((tmp_path / "one" / "peftkit.json").read_text())
    m2 = json.loads((tmp_path / "two" / "peftkit.json").read_text())
    assert m2["train"]["world_size"] == 2 and m1["train"]["world_size"] == 1
    assert m2["train"]["steps"] == m1["train"]["steps"] == 60
    # Same global batch, steps and lr: both runs learn the task (the loss starts at ln 3 = 1.10 for 3 labels);
    # the data order differs between the samplers, so the numbers are close, not equal.
    assert m1["train"]["final_loss"] < 0.6 and m2["train"]["final_loss"] < 0.6
    assert m1["metrics"]["accuracy"] >= 0.7 and m2["metrics"]["accuracy"] >= 0.7
    # The adapter rank 0 wrote loads and answers like any other, and nothing else was left beside it.
    model = peftkit.load(str(tmp_path / "two"))
    assert len(model.predict(PROBE)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.parametrize("parallel", ["segments", "data"])
def test_two_processes_train_a_bank(tiny_models, data, tmp_path, parallel):
    args = train_args(tiny_models["llama"], data, tmp_path / "bank", 4, "--segment-column", "platform")
    result = run_cli([*args, "--min-segment-rows", "10", "--set", f"segments.parallel={parallel}"], procs=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["segments"] == {"app": "app", "web": "web"}
    bank = AdapterBank.open(tmp_path / "bank")
    assert [p.adapter for p in bank.predict(PROBE, ["app", "web", "tv"])] == ["app", "web", "global"]
    glob = json.loads((tmp_path / "bank" / "global" / "peftkit.json").read_text())
    assert glob["train"]["world_size"] == 2  # the global adapter is always data-parallel
    manifests = [json.loads((tmp_path / "bank" / n / "peftkit.json").read_text()) for n in ("app", "web")]
    assert all(m["warm_start_from"] == "global" for m in manifests)
    if parallel == "segments":  # each rank trained one segment adapter alone
        assert sorted(m["trained_by_rank"] for m in manifests) == [0, 1]
        assert all(m["train"]["world_size"] == 1 for m in manifests)
    else:  # every segment adapter trained by both ranks together
        assert all(m["train"]["world_size"] == 2 for m in manifests)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # the shared temporary folder was renamed
