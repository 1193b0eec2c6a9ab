"""The command line end to end through Typer's runner: train -> predict -> inspect, and every bad input as one
line on stderr, a non-zero exit, no traceback and nothing written to --output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from tests.conftest import intent_rows

runner = CliRunner()


def tiny_train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        *extra,
    ]


def invoke(args: list[str]):
    return runner.invoke(app, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_adapter(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    intent_rows(120).to_csv(root / "intent.csv", index=False)
    out = root / "adapter"
    result = invoke(tiny_train_args(tiny_models["bert"], root / "intent.csv", out, "--json"))
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout holds only the JSON result: logs went to stderr
    assert summary["output"] == str(out) and set(summary["metrics"]) >= {"accuracy", "macro_f1"}
    return out


def test_predict_writes_one_row_per_input_in_order(trained_adapter, tmp_path):
    rows = intent_rows(30, seed=7)
    rows.to_csv(tmp_path / "new.csv", index=False)
    result = invoke(
        [
            "predict",
            "--adapter",
            str(trained_adapter),
            "--data",
            str(tmp_path / "new.csv"),
            "--output",
            str(tmp_path / "preds.csv"),
        ]
    )
    assert result.exit_code == 0, result.stderr
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert preds["text"].tolist() == rows["text"].tolist()
    assert set(preds["prediction"]) <= {"weak", "medium", "strong"}
    probs = preds[["prob_medium", "prob_strong", "prob_weak"]]
    assert ((probs.sum(axis=1) - 1).abs() < 1e-5).all()
    assert (preds["adapter"] == trained_adapter.name).all()
    # The same answers as the Python API, row for row.
    import peftkit

    api = peftkit.load(str(trained_adapter)).predict(rows["text"].tolist())
    assert preds["prediction"].tolist() == [p.label for p in api]


def test_predict_jsonl_output(trained_adapter, tmp_path):
    intent_rows(5, seed=3).to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    out = tmp_path / "preds.jsonl"
    result = invoke(
        [
            "predict",
            "--adapter",
            str(trained_adapter),
            "--data",
            str(tmp_path / "new.jsonl"),
            "--output",
            str(out),
            "--json",
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 5
    assert len(pd.read_json(out, lines=True)) == 5


def test_inspect_shows_the_manifest(trained_adapter):
    result = invoke(["inspect", str(trained_adapter), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["method"] == "lora" and info["labels"] == ["medium", "strong", "weak"]
    assert info["files"]["adapter_model.safetensors"] == info["adapter_bytes"]
    human = invoke(["inspect", str(trained_adapter)])
    assert "lora" in human.stdout and "eval accuracy" in human.stdout


@pytest.mark.parametrize("command", ["train", "predict", "inspect", "serve", "export", "doctor"])
def test_help_has_an_example(command):
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    assert f"peftkit {command}" in result.stdout


# --- bad input -----------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def assert_clean_failure(result, *fragments: str, output: Path | None = None) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert len([line for line in lines if line.startswith("error: ")]) == 1
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    if output is not None:
        assert not output.exists() or not any(output.iterdir()), "something was written to --output"
        assert not list(output.parent.glob(f".{output.name}.tmp-*")), "temporary folder left behind"


BAD_DATA = {
    "missing file": (None, ["does not exist"]),
    "unknown format": ("data.xlsx", ["data.xlsx", ".csv"]),
    "empty file": ("empty.csv", ["empty.csv"]),
    "missing text column": (
        [{"body": "a", "label": "x"}, {"body": "b", "label": "y"}],
        ["'text'", "--text-column"],
    ),
    "missing label column": (
        [{"text": "a", "y": "x"}, {"text": "b", "y": "y"}],
        ["'label'", "--label-column"],
    ),
    "empty text": (
        [{"text": "ok", "label": "x"}, {"text": " ", "label": "y"}, {"text": "b", "label": "x"}],
        ["row 2"],
    ),
    "missing label": (
        [{"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c", "label": "y"}],
        ["row 2"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_files(tiny_models, tmp_path, case):
    content, fragments = BAD_DATA[case]
    out = tmp_path / "out"
    if content is None:
        data = tmp_path / "nope.csv"
    elif isinstance(content, str):
        data = tmp_path / content
        data.write_text("" if content.endswith(".csv") else "x")
    else:
        data = write_csv(tmp_path / "rows.csv", content)
    result = invoke(tiny_train_args(tiny_models["bert"], data, out))
    assert_clean_failure(result, *fragments, output=out)
    if content is not None:
        assert data.name in result.stderr


def test_eval_labels_never_seen_in_training(tiny_models, tmp_path):
    train = write_csv(
        tmp_path / "train.csv",
        intent_rows(40).assign(label="weak").to_dict("records")
        + intent_rows(40, seed=2).assign(label="strong").to_dict("records"),
    )
    evals = write_csv(tmp_path / "eval.csv", [{"text": "brand new row", "label": "medium"}])
    result = invoke(tiny_train_args(tiny_models["bert"], train, tmp_path / "out", "--eval-data", str(evals)))
    assert_clean_failure(result, "medium", "eval.csv", output=tmp_path / "out")


def test_labels_flag_that_does_not_match_the_data(tiny_models, intent_csv, tmp_path):
    result = invoke(
        tiny_train_args(
            tiny_models["bert"], intent_csv, tmp_path / "out", "--task", "ordinal", "--labels", "low,mid,high"
        )
    )
    assert_clean_failure(result, "--labels", output=tmp_path / "out")


def test_nan_in_a_template_field(tiny_models, tmp_path):
    data = write_csv(
        tmp_path / "rows.csv",
        [
            {"orders": 3, "q": "buy", "label": "x"},
            {"orders": None, "q": "see", "label": "y"},
            {"orders": 1, "q": "hmm", "label": "x"},
        ],
    )
    result = invoke(
        tiny_train_args(tiny_models["bert"], data, tmp_path / "out", "--template", "orders: {orders}; q: {q}")
    )
    assert_clean_failure(result, "rows.csv", "row 2", "orders", output=tmp_path / "out")


def test_regression_label_that_is_not_a_number(tiny_models, tmp_path):
    data = write_csv(
        tmp_path / "rows.csv",
        [{"text": "a", "label": "0.5"}, {"text": "b", "label": "high"}, {"text": "c", "label": "0.1"}],
    )
    result = invoke(tiny_train_args(tiny_models["bert"], data, tmp_path / "out", "--task", "regression"))
    assert_clean_failure(result, "rows.csv", "row 2", "high", output=tmp_path / "out")


def test_unknown_method_is_refused_by_the_flag(tiny_models, intent_csv, tmp_path):
    result = runner.invoke(
        app, tiny_train_args(tiny_models["bert"], intent_csv, tmp_path / "out", "--method", "lorra")
    )
    assert result.exit_code == 2 and "lorra" in result.stderr and "lora" in result.stderr


def test_unknown_model_alias_lists_local_options(intent_csv, tmp_path):
    result = invoke(tiny_train_args(Path("org/some-hub-model"), intent_csv, tmp_path / "out"))
    assert_clean_failure(result, "org/some-hub-model", "smollm2-135m", "minilm-l6", output=tmp_path / "out")


def test_8bit_without_bitsandbytes(tiny_models, intent_csv, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    result = invoke(tiny_train_args(tiny_models["bert"], intent_csv, tmp_path / "out", "--quant", "8bit"))
    assert_clean_failure(result, "--quant 8bit needs bitsandbytes", output=tmp_path / "out")


def test_output_holding_a_different_adapter_needs_overwrite(trained_adapter, tiny_models, intent_csv):
    before = (trained_adapter / "adapter_model.safetensors").read_bytes()
    args = tiny_train_args(tiny_models["bert"], intent_csv, trained_adapter, "--method", "prefix")
    result = invoke(args)
    assert_clean_failure(result, "already holds a different adapter", "--overwrite")
    assert (trained_adapter / "adapter_model.safetensors").read_bytes() == before, (
        "the old adapter was touched"
    )


def test_bad_set_override(tiny_models, intent_csv, tmp_path):
    result = invoke(
        tiny_train_args(tiny_models["bert"], intent_csv, tmp_path / "out", "--set", "train.lrr=1")
    )
    assert_clean_failure(result, "unknown key 'train.lrr'", output=tmp_path / "out")


def test_recipes_ls_show_cp(tmp_path):
    listed = json.loads(invoke(["recipes", "ls", "--json"]).stdout)
    names = [r["name"] for r in listed]
    assert "reviews/minilm-l6_lora" in names and all(r["summary"] for r in listed)
    shown = invoke(["recipes", "show", "reviews/minilm-l6_lora"])
    assert shown.exit_code == 0 and "method:" in shown.stdout
    copied = invoke(["recipes", "cp", "reviews/minilm-l6_lora", str(tmp_path)])
    assert copied.exit_code == 0
    assert (tmp_path / "minilm-l6_lora.yaml").read_text() == shown.stdout
    again = invoke(["recipes", "cp", "reviews/minilm-l6_lora", str(tmp_path)])
    assert_clean_failure(again, "already exists", "--overwrite")
    assert_clean_failure(
        invoke(["recipes", "show", "nope"]), "no built-in recipe 'nope'", "reviews/minilm-l6_lora"
    )


def test_data_synth_writes_a_labelled_synthetic_file(tmp_path):
    out = tmp_path / "synthetic_intent.csv"
    result = invoke(
        [
            "data",
            "synth",
            "--task",
            "purchase_intent",
            "--rows",
            "50",
            "--seed",
            "3",
            "--output",
            str(out),
            "--json",
        ]
    )
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    frame = pd.read_csv(out)
    assert len(frame) == 50 and frame["synthetic"].all()
    assert info["labels"] == ["weak", "medium", "strong"] and sum(info["label_counts"].values()) == 50
    again = tmp_path / "again.csv"
    invoke(
        ["data", "synth", "--task", "purchase_intent", "--rows", "50", "--seed", "3", "--output", str(again)]
    )
    assert again.read_bytes() == out.read_bytes(), "same task, rows and seed must give the same file"
    assert_clean_failure(invoke(["data", "synth", "--task", "nope"]), "nope", "purchase_intent")
    assert_clean_failure(
        invoke(["data", "synth", "--task", "churn", "--output", str(tmp_path / "x.xlsx")]), "x.xlsx"
    )


# --- banks ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_bank(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-bank")
    intent_rows(160).to_csv(root / "intent.csv", index=False)
    out = root / "bank"
    args = tiny_train_args(tiny_models["bert"], root / "intent.csv", out, "--segment-column", "platform")
    result = invoke([*args, "--min-segment-rows", "10", "--no-warm-start", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["segments"] == {"app": "app", "web": "web"}
    assert set(summary["segment_evaluation"]["app"]) >= {"own", "global", "delta", "train_rows", "eval_rows"}
    human = invoke(["inspect", str(out)])
    assert "fallback global" in human.stdout and "app" in human.stdout
    return out


def test_predict_with_a_bank_answers_each_row_with_its_segment(trained_bank, tmp_path):
    from peftkit.inference.bank import AdapterBank

    rows = intent_rows(20, seed=3)
    rows.loc[0, "platform"] = "kiosk"  # no adapter: the global one answers
    rows.to_csv(tmp_path / "new.csv", index=False)
    result = invoke(
        [
            "predict",
            "--bank",
            str(trained_bank),
            "--data",
            str(tmp_path / "new.csv"),
            "--output",
            str(tmp_path / "p.csv"),
        ]
    )
    assert result.exit_code == 0, result.stderr
    preds = pd.read_csv(tmp_path / "p.csv")
    expected = AdapterBank.open(trained_bank).predict(rows["text"].tolist(), rows["platform"].tolist())
    assert preds["adapter"].tolist() == [p.adapter for p in expected]
    assert preds["adapter"][0] == "global" and set(preds["adapter"][1:]) == {"app", "web"}
    assert preds["prediction"].tolist() == [p.label for p in expected]
    one = invoke(
        ["predict", "--bank", str(trained_bank), "--data", str(tmp_path / "new.csv"), "--segment", "web"]
    )
    assert set(pd.read_csv(__import__("io").StringIO(one.stdout))["adapter"]) == {"web"}


def test_bank_flag_errors(trained_bank, trained_adapter, tiny_models, tmp_path):
    rows = write_csv(tmp_path / "new.csv", [{"text": "buy now", "platform": "app"}])
    both = invoke(
        ["predict", "--bank", str(trained_bank), "--adapter", str(trained_adapter), "--data", str(rows)]
    )
    assert_clean_failure(both, "exactly one of --adapter")
    column = invoke(["predict", "--bank", str(trained_bank), "--data", str(rows), "--segment-column", "shop"])
    assert_clean_failure(column, "no segment column 'shop'", "columns: text, platform")
    not_bank = invoke(["predict", "--bank", str(trained_adapter), "--data", str(rows)])
    assert_clean_failure(not_bank, "is not an adapter bank")
    data = tmp_path / "intent.csv"
    intent_rows(60).to_csv(data, index=False)
    again = invoke(tiny_train_args(tiny_models["bert"], data, trained_bank, "--segment-column", "platform"))
    assert_clean_failure(again, "already holds a bank; pass --overwrite")
    missing = invoke(tiny_train_args(tiny_models["bert"], data, tmp_path / "b2", "--segment-column", "shop"))
    assert_clean_failure(missing, "--segment-column 'shop': no such column", output=tmp_path / "b2")


def test_inspect_shows_an_export(trained_adapter, tmp_path):
    out = tmp_path / "export"
    result = invoke(["export", "--adapter", str(trained_adapter), "--to", "peft-lora", "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    info = json.loads(invoke(["inspect", str(out), "--json"]).stdout)
    assert info["target"] == "peft-lora" and info["source"]["method"] == "lora"
    assert info["source"]["adapter"] == str(trained_adapter.resolve())
    assert "adapter_model.safetensors" in info["files"] and "head.safetensors" in info["files"]
    human = invoke(["inspect", str(out)]).stdout
    assert "target peft-lora" in human and "lora" in human


@pytest.mark.parametrize("command", ["train", "doctor"])
def test_every_shared_run_flag_reaches_the_config(command):
    """`train` and `doctor` hand their parameters to `flag_overrides` by name: a flag that one of them lacks, or
    a parameter renamed so it no longer matches, would be dropped without a word."""
    import inspect

    from peftkit.cli.doctor import doctor
    from peftkit.cli.options import flag_overrides, run_overrides
    from peftkit.cli.train import train

    shared = set(inspect.signature(run_overrides).parameters)
    params = set(inspect.signature({"train": train, "doctor": doctor}[command]).parameters)
    assert shared <= params, sorted(shared - params)
    assert flag_overrides(
        {"lr": 0.5, "max_steps": 3, "labels": "a, b", "set_": ["method.r=4"], "json_": True}
    ) == {
        "train.lr": 0.5,
        "train.max_steps": 3,
        "data.labels": ["a", "b"],
        "method.r": 4,
    }
