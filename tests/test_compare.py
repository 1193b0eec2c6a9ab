"""`peftkit compare`: runs per (method, quant, seed) in their own processes, resumable, and a report built from the
stored runs; the statistics and the goal checks against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.compare import charts, measure, report, table
from peftkit.compare.measure import flop_factor, non_embedding_params
from tests.conftest import intent_rows

runner = CliRunner()


@pytest.fixture(scope="module")
def recipe(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = root / "intent.csv"
    intent_rows(120).to_csv(data, index=False)
    path = root / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "data": {"train": str(data), "max_length": 32},
                "model": {"name": str(tiny_models["bert"])},
                "method": {"name": "lora", "r": 4},
                "train": {"max_steps": 4, "batch_size": 8, "seed": 7, "lr": 2e-3},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def compared(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-out") / "cmp"
    args = ["compare", "--recipe", str(recipe), "--methods", "lora,full", "--seeds", "2"]
    result = runner.invoke(app, [*args, "--segment-column", "platform", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, args, json.loads(result.stdout)


def test_every_run_is_recorded_once_with_its_measurements(compared):
    out, _, data = compared
    names = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert names == sorted(
        f"{m}_none_seed{s}.json" for m in ("lora", "full", "peft-trainer", "tutorial") for s in (7, 8)
    )
    lora = json.loads((out / "runs" / "lora_none_seed7.json").read_text())
    full = json.loads((out / "runs" / "full_none_seed7.json").read_text())
    assert 0 < lora["trainable_percent"] < 100 and full["trainable_percent"] == 100
    assert lora["config"]["method"]["r"] == 4 and lora["config"]["train"]["lr"] == 2e-3  # the recipe's own
    assert full["config"]["train"]["lr"] is None  # another method: its own default lr
    t = lora["train"]
    assert 0 < t["real_tokens"] <= t["padded_tokens"]
    assert lora["flops"]["factor"] == 4 and full["flops"]["factor"] == 6
    # both rows count the same base's matmuls: LoRA's adapters are left out, full's embeddings too
    assert lora["flops"]["non_embedding_params"] == full["flops"]["non_embedding_params"]
    assert lora["flops"]["real_per_second"] == pytest.approx(
        4 * lora["flops"]["non_embedding_params"] * t["real_tokens"] / t["seconds"]
    )
    assert lora["memory"]["kind"] in ("cpu_peak_rss", "cuda_max_allocated")
    assert lora["memory"]["peak_bytes"] > 10 * 2**20
    assert set(lora["segments"]) == {"app", "web"}
    assert sum(s["rows"] for s in lora["segments"].values()) == lora["rows"]["eval"]
    tutorial = json.loads((out / "runs" / "tutorial_none_seed7.json").read_text())
    assert tutorial["train"]["padded_tokens"] == 128 * 8 * 4  # every row of 4 steps of 8 padded to 128
    assert tutorial["train"]["padding_share"] > t["padding_share"]
    assert data["runs"] == 8 and {r["method"] for r in data["ranking"]} == {
        "lora",
        "full",
        "peft+trainer",
        "tutorial",
    }


def test_report_files_and_rerender(compared):
    out, _, data = compared
    md = (out / "report.md").read_text()
    assert (
        "| method | macro_f1 (95% CI) |" in md
        and "**Recommendation.**" in md
        and "macro_f1 per segment" in md
    )
    for chart in charts.CHARTS:
        assert (out / "charts" / chart).stat().st_size > 1000
    again = runner.invoke(app, ["compare", "--results", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ranking"] == data["ranking"]


def test_rerun_resumes_and_redoes_only_missing_runs(compared):
    out, args, _ = compared
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    (out / "runs" / "full_none_seed8.json").unlink()  # as if the compare had been interrupted during this run
    result = runner.invoke(app, [*args, "--segment-column", "platform", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "resuming: 7 of 8 runs already done" in result.output
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert set(after) == set(before)
    assert [n for n in after if after[n] != before.get(n)] == ["full_none_seed8.json"]


def test_a_different_budget_in_the_same_folder_is_refused(compared):
    out, args, _ = compared
    result = runner.invoke(
        app, [*args, "--max-steps", "9", "--segment-column", "platform", "--output", str(out)]
    )
    assert result.exit_code == 2
    assert "holds a compare with other data, split, model, budget or method settings" in result.output
    assert "(changed: config.train.max_steps)" in result.output


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("train.seed=9", "config.train.seed"),
        ("method.r=8", "config.method.r"),
        ("train.lr=0.01", "config.train.lr"),
    ],
)
def test_a_different_split_or_method_setting_is_refused(compared, override, changed):
    # Finished runs are reused as they are: a resume that changed the split seed (other rows) or the recipe's method
    # options would mix runs trained on different things under one row.
    out, args, _ = compared
    result = runner.invoke(
        app, [*args, "--set", override, "--segment-column", "platform", "--output", str(out)]
    )
    assert result.exit_code == 2 and f"(changed: {changed})" in result.output


def test_a_method_named_twice_runs_once(compared):
    out, args, _ = compared
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    twice = [a if a != "lora,full" else "lora,lora,full" for a in args]
    result = runner.invoke(app, [*twice, "--segment-column", "platform", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "resuming: 8 of 8 runs already done" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before


def test_methods_that_cannot_run_are_skipped_with_a_note(recipe):
    from peftkit.compare import ComparePlan
    from peftkit.config import load_config

    cfg = load_config(recipe, {"train.gradient_checkpointing": True})
    plan = ComparePlan(
        recipe=str(recipe),
        config=cfg.model_dump(mode="json"),
        methods=["lora", "prefix", "full"],
        quants=["none", "8bit"],
        seeds=[0],
        baselines=False,
    )
    keys, skipped = plan.runs()
    assert [(k.method, k.quant) for k in keys] == [("lora", "none"), ("full", "none"), ("lora", "8bit")]
    assert any(n.startswith("prefix: does not work with train.gradient_checkpointing") for n in skipped)
    assert any(n.startswith("full x 8bit") for n in skipped)


def test_bad_flags_are_one_line_errors(recipe, tmp_path):
    bad_method = runner.invoke(app, ["compare", "--recipe", str(recipe), "--methods", "lora,qlora"])
    assert bad_method.exit_code == 2 and "--methods: unknown qlora" in bad_method.output
    bad_column = runner.invoke(
        app,
        ["compare", "--recipe", str(recipe), "--segment-column", "country", "--output", str(tmp_path / "x")],
    )
    assert bad_column.exit_code == 2 and "--segment-column country: the rows of" in bad_column.output
    assert not (tmp_path / "x").exists()
    missing = runner.invoke(app, ["compare", "--results", str(tmp_path)])
    assert missing.exit_code == 2 and "no compare.json" in missing.output


def test_ci_is_the_t_interval_over_seeds():
    s = report.stat([0.5, 0.7, 0.6])
    # mean 0.6, sample sd 0.1, t(0.975, df=2) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert s.mean == pytest.approx(0.6) and s.ci95 == pytest.approx(0.248414, abs=1e-6) and s.n == 3
    assert math.isnan(report.stat([0.5]).ci95)


def _record(
    method,
    seed,
    acc,
    *,
    sps,
    peak,
    trainable_pct=0.5,
    quant="none",
    baseline=False,
    task="classification",
    gpu=False,
):
    metric = "mae" if task == "regression" else "macro_f1"
    return {
        "key": {"method": method, "quant": quant, "seed": seed},
        "baseline": baseline,
        "task": task,
        "metrics": {metric: acc},
        "trainable_params": int(trainable_pct * 1000),
        "trainable_percent": trainable_pct,
        "adapter_bytes": 1000,
        "memory": {"peak_bytes": peak, "kind": "cuda_max_allocated" if gpu else "cpu_peak_rss"},
        "train": {"samples_per_second": sps, "real_tokens_per_second": 10 * sps, "padding_share": 0.1},
        "flops": {"real_share_of_peak": 0.5, "computed_share_of_peak": 0.6},
        "inference": {"latency_ms_p50": 5.0, "throughput_rows_per_second": 100.0},
    }


def test_recommendation_and_goals_follow_the_numbers():
    records = [
        *(_record("full", s, a, sps=10, peak=900, trainable_pct=100) for s, a in [(0, 0.80), (1, 0.82)]),
        *(_record("lora", s, a, sps=30, peak=500) for s, a in [(0, 0.805), (1, 0.805)]),
        *(_record("prefix", s, a, sps=40, peak=450) for s, a in [(0, 0.70), (1, 0.71)]),
        *(_record("lora", s, 0.80, sps=20, peak=200, quant="8bit") for s in (0, 1)),
        *(_record("peft+trainer", s, 0.80, sps=20, peak=600, baseline=True) for s in (0, 1)),
    ]
    rows = report.build_rows(records)
    assert [r.name for r in report.rank(rows, "classification")][:2] == ["full", "lora"]
    # full (0.81) and lora (0.805) are tied within 1 point; lora trains 3x faster, so it is the pick. prefix is not tied.
    text = report.recommend(rows, "classification")
    assert (
        text.startswith("Use **lora**: macro_f1 0.805")
        and "3.00× the speed of the next tied row (full)" in text
    )
    by = {g.goal: g for g in report.goals(rows, "classification")}
    assert (
        by["LoRA training samples/s vs peft+trainer"].met
        and "1.50×" in by["LoRA training samples/s vs peft+trainer"].measured
    )
    assert by["lora vs full fine-tuning"].met
    assert by["lora 8-bit peak memory vs unquantised"].measured.startswith("0.40×")
    assert by["lora 8-bit peak memory vs unquantised"].met


def test_flop_share_is_also_shown_against_the_best_native_dtype(monkeypatch):
    fp32, bf16 = {"dtype": "float32", "flops": 100e9}, {"dtype": "bfloat16", "flops": 400e9}
    records = [_record("lora", s, 0.8, sps=30, peak=500) for s in (0, 1)]
    old = report.build_rows(records)[0]  # records from before the best peak was measured
    assert old.best_dtype is None and old.best_flops_share.mean == 0.5
    assert table.table_rows([old], "classification")[0][7] == "50% (60%)"
    for r in records:
        r["flops"] |= {"matmul_peak": fp32, "best_peak": bf16, "real_share_of_best_peak": 0.125}
    row = report.build_rows(records)[0]
    assert row.best_dtype == "bfloat16"
    assert table.table_rows([row], "classification")[0][7] == "50% (60%); 12% of bfloat16"
    goal = {g.goal: g for g in report.goals([row], "classification")}[
        "LoRA FLOP/s on real tokens vs measured matmul peak"
    ]
    assert goal.measured.endswith("; 12% of the bfloat16 peak")
    # The best peak is the fastest native dtype, and the run's own peak is reused, not timed again.
    monkeypatch.setattr(measure, "native_dtypes", lambda device: ["float32", "bfloat16"])
    monkeypatch.setattr(
        measure, "matmul_peak", lambda device, dtype: bf16 if dtype is torch.bfloat16 else 1 / 0
    )
    assert measure.best_matmul_peak("cpu", fp32) is bf16
    monkeypatch.setattr(measure, "native_dtypes", lambda device: ["float32"])
    assert measure.best_matmul_peak("cpu", fp32) is fp32


def test_flop_accounting(tiny_models):
    from transformers import AutoModelForSequenceClassification

    assert flop_factor(base_trains=False, gradient_checkpointing=False) == 4
    assert flop_factor(base_trains=True, gradient_checkpointing=False) == 6
    assert flop_factor(base_trains=True, gradient_checkpointing=True) == 8
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_models["bert"]), num_labels=2)
    emb = model.bert.embeddings
    tables = sum(
        p.numel()
        for m in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings)
        for p in m.parameters()
    )
    assert non_embedding_params(model) == sum(p.numel() for p in model.parameters()) - tables


def test_goals_judge_an_error_metric_and_gpu_memory_by_their_own_rules():
    # MAE: lower is better. LoRA at 0.20 vs full at 0.10 is 0.10 behind, not ahead.
    regression = report.build_rows(
        [
            *(
                _record("full", s, 0.10, sps=10, peak=900, trainable_pct=100, task="regression")
                for s in (0, 1)
            ),
            *(_record("lora", s, 0.20, sps=30, peak=500, task="regression") for s in (0, 1)),
        ]
    )
    lora_vs_full = {g.goal: g for g in report.goals(regression, "regression")}["lora vs full fine-tuning"]
    assert not lora_vs_full.met and lora_vs_full.measured.startswith("+0.100 mae")
    # 8-bit at 0.52x: short of CPU's 0.5x, within GPU's 0.55x (bf16 is already half of fp32's bytes).
    for gpu, met in ((False, False), (True, True)):
        rows = report.build_rows(
            [
                *(_record("lora", s, 0.8, sps=30, peak=1000, gpu=gpu) for s in (0, 1)),
                *(_record("lora", s, 0.8, sps=20, peak=520, gpu=gpu, quant="8bit") for s in (0, 1)),
            ]
        )
        goal = {g.goal: g for g in report.goals(rows, "classification")}[
            "lora 8-bit peak memory vs unquantised"
        ]
        assert goal.met is met and goal.target == ("≤ 0.55× (GPU bf16)" if gpu else "≤ 0.5× (CPU fp32)")


def test_nothing_is_recommended_or_matched_when_no_row_beats_the_majority_class():
    # Majority class 0.52: full at 0.508 and lora at 0.515 learned nothing; ranking them is noise.
    records = [
        *(_record("full", s, 0.508, sps=5, peak=900, trainable_pct=100) for s in (0, 1)),
        *(_record("lora", s, 0.515, sps=7, peak=500) for s in (0, 1)),
    ]
    rows = report.build_rows(records)
    text = report.recommend(rows, "classification", majority=0.52)
    assert text.startswith("No method is recommended: none beat the majority-class macro_f1 (0.520)")
    assert "best: lora, 0.515" in text
    goal = {g.goal: g for g in report.goals(rows, "classification", majority=0.52)}[
        "lora vs full fine-tuning"
    ]
    assert goal.met is None and goal.measured.endswith(
        "full fine-tuning did not beat the majority class (0.520)"
    )
    # One point above the majority class is learning: the usual rules apply again.
    assert report.recommend(rows, "classification", majority=0.49).startswith("Use **lora**")
    assert {g.goal: g for g in report.goals(rows, "classification", majority=0.49)}[
        "lora vs full fine-tuning"
    ].met


def test_the_tutorial_reads_the_tokens_every_row_reads_and_pads_them_to_128(recipe):
    from peftkit.compare.baselines import run_baseline
    from peftkit.config import load_config
    from peftkit.data import load_splits

    # Every row is longer than 4 tokens: cut at the recipe's max_length, 4 real tokens each, 124 of padding.
    cfg = load_config(recipe, {"data.max_length": 4, "train.max_steps": 2})
    res = run_baseline("tutorial", cfg, load_splits(cfg.data, cfg.task, cfg.train.seed), [])
    assert (res.real_tokens, res.padded_tokens) == (4 * 8 * 2, 128 * 8 * 2)
