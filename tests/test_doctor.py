"""``peftkit doctor``: every known trap shows up as a failed or warned row before training, never as a traceback, and a
clean run passes. Tiny models from conftest; CUDA, bitsandbytes and disk space are faked by monkeypatching."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from peftkit import doctor
from peftkit.cli import doctor as doctor_cmd
from peftkit.config import load_config
from peftkit.doctor import FAIL, OK, WARN, has_failures, run_checks
from peftkit.errors import PeftkitError
from peftkit.methods import METHODS
from peftkit.methods.adalora import allocation_plan as adalora_plan

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(autouse=True)
def _locked_environment(monkeypatch):
    """These tests are about the run being checked, not the machine: the lock row sees a matching environment (under
    `make upgrade` it would warn). The lock row itself is tested in test_lock.py."""
    import peftkit.lock

    monkeypatch.setattr(peftkit.lock, "drift", lambda lock=None: peftkit.lock.Drift(Path("lock"), 1, {}))


def config(tiny_models, data: Path, out: Path, **overrides):
    """A tiny-bert run on `data`: 108 training rows of intent_csv, 7 optimizer steps an epoch at batch 16."""
    base = {
        "model.name": str(tiny_models["bert"]),
        "data.train": str(data),
        "output": str(out),
        "train.batch_size": 16,
        "train.epochs": 1,
    }
    return load_config(None, base | overrides)


# The report's rows for a valid config, in order (AdaLoRA's schedule and segments only appear when they apply).
ROWS = ("versions", "lock", "device", "quant", "config", "model", "data", "method", "output", "disk")


def rows(checks) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def app() -> typer.Typer:
    """The command as the CLI registers it, in a group of its own (a one-command Typer app drops the name)."""
    group = typer.Typer(pretty_exceptions_enable=False)
    group.callback()(lambda: None)
    group.command("doctor")(doctor_cmd.doctor)
    return group


def invoke(app, *args: str):
    # A wide terminal, so that rich keeps each detail on one line and the assertions can find whole phrases.
    return CliRunner().invoke(app, ["doctor", *args], env={"COLUMNS": "300"})


def tiny_args(tiny_models, data: Path, out: Path) -> list[str]:
    return [
        "--model",
        str(tiny_models["bert"]),
        "--data",
        str(data),
        "--output",
        str(out),
        "--batch-size",
        "16",
    ]


# --- a clean run ----------------------------------------------------------------------------------------------


def test_clean_config_passes_every_check(tiny_models, intent_csv, tmp_path):
    checks = run_checks(config(tiny_models, intent_csv, tmp_path / "out"))
    assert not has_failures(checks), [c for c in checks if c.status != OK]
    assert [c.name for c in checks] == list(ROWS)
    by = rows(checks)
    assert "108 train / 12 eval rows" in by["data"].detail
    assert "BertForSequenceClassification" in by["model"].detail
    assert by["method"].detail.startswith("lora on bert: ")
    assert all(c.fix == "" for c in checks if c.status == OK)


def test_cli_clean_run_exits_0_and_json_is_the_list_of_checks(app, tiny_models, intent_csv, tmp_path):
    result = invoke(app, *tiny_args(tiny_models, intent_csv, tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)  # stdout holds only the JSON
    assert [set(c) for c in checks] == [{"name", "status", "detail", "fix"}] * len(checks)
    assert {c["status"] for c in checks} <= {OK, WARN}
    assert "method" in [c["name"] for c in checks]


# --- environment ----------------------------------------------------------------------------------------------


def _without_bitsandbytes(monkeypatch):
    import peft  # noqa: F401  (imported first: peft caches whether bitsandbytes exists, later tests need the truth)

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )


def test_8bit_without_bitsandbytes_fails(monkeypatch, tiny_models, intent_csv, tmp_path):
    _without_bitsandbytes(monkeypatch)
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"model.quant": "8bit"})))
    assert by["quant"].status == FAIL
    assert "needs bitsandbytes" in by["quant"].detail
    assert "pip install 'bitsandbytes" in by["quant"].fix
    assert by["data"].status == OK  # the other rows still ran


def test_without_bitsandbytes_quant_none_is_fine(monkeypatch, tiny_models, intent_csv, tmp_path):
    _without_bitsandbytes(monkeypatch)
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out")))
    assert by["quant"].status == OK and "not needed" in by["quant"].detail


def _fake_gpu(monkeypatch, capability):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")


def test_8bit_on_a_gpu_older_than_turing_fails(monkeypatch, tiny_models, intent_csv, tmp_path):
    _fake_gpu(monkeypatch, (7, 0))
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"model.quant": "8bit"})))
    assert by["device"].status == OK and "cuda: Tesla V100" in by["device"].detail
    assert by["quant"].status == FAIL
    assert "compute capability 7.0" in by["quant"].detail and "7.5" in by["quant"].detail


def test_8bit_on_a_turing_or_newer_gpu_runs_the_int8_check_there(
    monkeypatch, tiny_models, intent_csv, tmp_path
):
    _fake_gpu(monkeypatch, (7, 5))
    tried = []
    monkeypatch.setattr(doctor.environment, "int8_smoke_test", lambda device: tried.append(device))
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"model.quant": "8bit"})))
    assert tried == ["cuda"]
    assert by["quant"].status == OK, by["quant"]


@pytest.mark.bnb
@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes")
def test_8bit_on_cpu_checks_a_real_int8_matmul(tiny_models, intent_csv, tmp_path):
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"model.quant": "8bit"})))
    assert by["quant"].status == OK and "int8 matmul checked on cpu" in by["quant"].detail


@pytest.mark.bnb
@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes")
def test_int8_check_fails_when_the_backend_computes_garbage(monkeypatch):
    import bitsandbytes as bnb
    import torch

    monkeypatch.setattr(bnb.nn.Linear8bitLt, "forward", lambda self, x: torch.zeros(x.shape[0], 8))
    assert doctor.int8_smoke_test("cpu").startswith("wrong results")
    monkeypatch.setattr(bnb.nn.Linear8bitLt, "forward", lambda self, x: 1 / 0)
    assert doctor.int8_smoke_test("cpu").startswith("ZeroDivisionError")


def test_missing_optional_package_is_noted_and_missing_required_one_fails(monkeypatch):
    real = importlib.metadata.version
    gone = {"bitsandbytes"}

    def version(name):
        if name in gone:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    row = doctor.check_versions()
    assert row.status == OK and "not installed: bitsandbytes" in row.detail
    gone.add("peft")
    row = doctor.check_versions()
    assert row.status == FAIL and "missing: peft" in row.detail and "pip install peft" in row.fix


# --- config, model, method ------------------------------------------------------------------------------------


def test_prefix_with_gradient_checkpointing_is_a_failed_config_row(tiny_models, intent_csv, tmp_path):
    with pytest.raises(PeftkitError) as err:
        config(
            tiny_models,
            intent_csv,
            tmp_path / "out",
            **{"method.name": "prefix", "train.gradient_checkpointing": True},
        )
    checks = run_checks(err.value)
    assert [c.name for c in checks] == ["versions", "lock", "device", "config"]
    assert checks[-1].status == FAIL and "does not work with gradient checkpointing" in checks[-1].detail


def test_cli_bad_config_exits_1_and_still_prints_every_row(app, tiny_models, intent_csv, tmp_path):
    args = tiny_args(tiny_models, intent_csv, tmp_path / "out")
    result = invoke(app, *args, "--method", "prefix", "--set", "train.gradient_checkpointing=true")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    for word in ("versions", "device", "config", "gradient checkpointing", "fail"):
        assert word in result.stdout
    assert "0 warn, 1 fail: fix the failed rows" in result.stdout


def test_hub_id_model_fails_with_the_resolver_message(tiny_models, intent_csv, tmp_path):
    cfg = config(tiny_models, intent_csv, tmp_path / "out", **{"model.name": "meta-llama/Llama-3.2-1B"})
    by = rows(run_checks(cfg))
    assert by["model"].status == FAIL
    assert "neither a built-in alias" in by["model"].detail and "unreachable offline" in by["model"].detail
    assert by["method"].status == WARN and "not checked" in by["method"].detail
    assert by["data"].status == OK  # rows that do not depend on the model still run


def test_model_folder_without_tokenizer_fails(tiny_models, intent_csv, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models["bert"] / name, folder / name)
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"model.name": str(folder)})))
    assert by["model"].status == FAIL and "no tokenizer files" in by["model"].detail


def test_lora_target_modules_the_model_lacks_fail(tiny_models, intent_csv, tmp_path):
    cfg = config(tiny_models, intent_csv, tmp_path / "out", **{"method.target_modules": ["q_proj", "v_proj"]})
    by = rows(run_checks(cfg))
    assert by["method"].status == FAIL and "lora cannot be applied to this bert model" in by["method"].detail


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_applies_to_a_decoder_without_loading_weights(method, tiny_models, intent_csv, tmp_path):
    cfg = config(
        tiny_models,
        intent_csv,
        tmp_path / "out",
        **{"model.name": str(tiny_models["llama"]), "method.name": method},
    )
    by = rows(run_checks(cfg))
    assert by["method"].status == OK, by["method"]
    assert by["method"].detail.startswith(f"{method} on llama: ")


# --- data -----------------------------------------------------------------------------------------------------


def test_missing_data_file_fails(tiny_models, tmp_path):
    by = rows(run_checks(config(tiny_models, tmp_path / "nope.csv", tmp_path / "out")))
    assert by["data"].status == FAIL and "does not exist" in by["data"].detail
    assert by["model"].status == OK


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"data.template": "{text} on {device}"}, "--template field {device} is not a column"),
        ({"data.text_column": "query"}, "has no column 'query'"),
        ({"task": "ordinal", "data.labels": ["weak", "strong"]}, "not listed: medium"),
        ({"task": "regression"}, "is not a finite number"),
    ],
    ids=["template-field", "text-column", "ordinal-labels", "regression-labels"],
)
def test_data_problems_fail_the_data_row(overrides, message, tiny_models, intent_csv, tmp_path):
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **overrides)))
    assert by["data"].status == FAIL and message in by["data"].detail, by["data"]


def test_regression_on_the_score_column_passes(tiny_models, intent_csv, tmp_path):
    cfg = config(
        tiny_models, intent_csv, tmp_path / "out", task="regression", **{"data.label_column": "score"}
    )
    by = rows(run_checks(cfg))
    assert by["data"].status == OK and "scores 0.1..0.9" in by["data"].detail


# --- AdaLoRA --------------------------------------------------------------------------------------------------


def test_adalora_schedule_too_short_warns(tiny_models, intent_csv, tmp_path):
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **{"method.name": "adalora"})))
    row = by["adalora schedule"]
    assert row.status == WARN
    assert "the run: 7 steps, tinit 0" in row.detail and "tinit collapses to 0" in row.detail
    assert "--epochs" in row.fix
    assert not has_failures(by.values())  # a warning, not a refusal: the run would start


def test_adalora_long_run_is_ok(tiny_models, intent_csv, tmp_path):
    cfg = config(
        tiny_models, intent_csv, tmp_path / "out", **{"method.name": "adalora", "train.max_steps": 400}
    )
    row = rows(run_checks(cfg))["adalora schedule"]
    assert row.status == OK, row
    assert "rank budget 48 -> 16 over 4 modules" in row.detail  # tiny bert: 2 layers x (query, value)


def test_adalora_budget_that_keeps_almost_nothing_warns(tiny_models, intent_csv, tmp_path):
    overrides = {"method.name": "adalora", "train.max_steps": 400, "method.target_r": 1, "method.init_r": 12}
    row = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out", **overrides)))["adalora schedule"]
    assert row.status == WARN and "keeps 4 of 48 ranks" in row.detail and "method.target_r" in row.fix


@pytest.mark.parametrize("total", [1, 3, 7, 40, 282, 1001])
def test_allocation_count_matches_peft_budget_schedule(total):
    """The count doctor reports is what peft's RankAllocator does when peftkit calls it after steps 1..total."""
    from types import SimpleNamespace

    from peft.tuners.adalora.layer import RankAllocator

    opts = METHODS["adalora"].options(name="adalora")
    sched, count = adalora_plan(opts, total)
    allocator = SimpleNamespace(
        peft_config=SimpleNamespace(**{k: sched[k] for k in ("tinit", "tfinal", "total_step", "deltaT")}),
        init_bgt=100,
        target_bgt=10,
    )
    end = total - sched["tfinal"]
    masked = sum(RankAllocator.budget_schedule(allocator, s)[1] for s in range(1, end))
    assert count == masked + 1  # + the forced allocation at total - tfinal


# --- output, disk, segments -----------------------------------------------------------------------------------


def _fake_adapter(folder: Path, cfg_dict: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "peftkit.json").write_text(json.dumps({"config": cfg_dict}))
    (folder / "adapter_model.safetensors").write_bytes(b"x")


def test_output_holding_a_different_adapter(tiny_models, intent_csv, tmp_path):
    out = tmp_path / "out"
    cfg = config(tiny_models, intent_csv, out)
    _fake_adapter(out, cfg.model_dump(mode="json") | {"task": "regression"})
    row = rows(run_checks(cfg))["output"]
    assert row.status == FAIL and "already holds a different adapter (task differ)" in row.detail
    assert "--overwrite" in row.fix
    row = rows(run_checks(cfg, overwrite=True))["output"]
    assert row.status == WARN and "a different adapter" in row.detail and "replaces it" in row.detail


def test_output_holding_the_same_config_warns(tiny_models, intent_csv, tmp_path):
    out = tmp_path / "out"
    cfg = config(tiny_models, intent_csv, out)
    _fake_adapter(out, cfg.model_dump(mode="json"))
    row = rows(run_checks(cfg))["output"]
    assert row.status == WARN and "same config" in row.detail


def test_resume_without_a_checkpoint_fails(tiny_models, intent_csv, tmp_path):
    row = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out"), resume=True))["output"]
    assert row.status == FAIL and "no checkpoint" in row.detail


Usage = namedtuple("Usage", "total used free")


@pytest.mark.parametrize("free, status", [(50 << 20, FAIL), (500 << 20, WARN), (10 << 30, OK)])
def test_disk_space_thresholds(free, status, monkeypatch, tiny_models, intent_csv, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(free * 2, free, free))
    row = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out")))["disk"]
    assert row.status == status, row


def test_output_under_a_file_is_not_writable(tiny_models, intent_csv, tmp_path):
    (tmp_path / "afile").write_text("")
    row = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "afile" / "out")))["disk"]
    assert row.status == FAIL and "cannot write in" in row.detail


def test_segment_column_missing_fails(tiny_models, intent_csv, tmp_path):
    cfg = config(tiny_models, intent_csv, tmp_path / "bank", **{"segments.column": "country"})
    row = rows(run_checks(cfg))["segments"]
    assert row.status == FAIL and "--segment-column 'country': no such column" in row.detail


@pytest.mark.parametrize(
    "min_rows, status, text", [(30, OK, "2 of 2 values of 'platform'"), (500, WARN, "only the global")]
)
def test_segments_count_values_with_enough_rows(min_rows, status, text, tiny_models, intent_csv, tmp_path):
    overrides = {"segments.column": "platform", "segments.min_rows": min_rows}
    row = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "bank", **overrides)))["segments"]
    assert row.status == status and text in row.detail, row


# --- robustness -----------------------------------------------------------------------------------------------


def test_a_check_that_crashes_becomes_a_failed_row(monkeypatch, tiny_models, intent_csv, tmp_path):
    def broken(facts):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_data", broken)
    monkeypatch.delenv("PEFTKIT_DEBUG", raising=False)
    by = rows(run_checks(config(tiny_models, intent_csv, tmp_path / "out")))
    assert by["data"].status == FAIL and "RuntimeError: boom" in by["data"].detail
    assert by["disk"].status == OK  # later checks still ran
    monkeypatch.setenv("PEFTKIT_DEBUG", "1")
    with pytest.raises(RuntimeError):
        run_checks(config(tiny_models, intent_csv, tmp_path / "out"))


def test_cli_missing_data_exits_1_with_the_table(app, tiny_models, tmp_path):
    result = invoke(app, *tiny_args(tiny_models, tmp_path / "nope.csv", tmp_path / "out"))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    out = result.stdout
    assert "peftkit doctor" in out and "Traceback" not in out + result.stderr
    for name in ROWS:
        assert name in out
    assert "does not exist" in out and "1 fail" in out
