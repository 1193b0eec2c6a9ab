"""`peftkit refresh`: candidates from the adapter in production on new rows, the no-regression gate on the same
held-out rows, promotion as a new version, refusal of a worse (shuffled-label) candidate, checks before training, and
a kill in the middle leaving the bank as it was. Tiny BERT segment bank from tests/test_bank.py's config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from peftkit.artifacts.versions import history, production, question_folder
from peftkit.cli import app
from peftkit.errors import PeftkitError
from peftkit.inference.bank import AdapterBank
from peftkit.refresh.gate import _metric, judge
from peftkit.refresh.rows import cut
from peftkit.refresh.run import refresh
from peftkit.tasks import IDENTITY, TASKS
from peftkit.training.segments import train_bank
from tests.conftest import intent_rows
from tests.test_bank import bank_cfg

runner = CliRunner()
PROBE = ["buy now the blue shirt 1", "just browsing phones 2", "compare prices of laptop gift 3"]


def new_rows(n: int, seed: int, shuffle_older: bool = False) -> pd.DataFrame:
    """`intent_rows` with a ``day`` (row order = time); `shuffle_older`: labels of all but the newest 30% shuffled."""
    rows = intent_rows(n, seed)
    rows["day"] = np.arange(n)
    if shuffle_older:
        older = rows["day"] < int(0.7 * n)
        rows.loc[older, "label"] = np.random.default_rng(seed).permutation(
            rows.loc[older, "label"].to_numpy()
        )
    return rows


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("refresh")
    # 40 steps of 16 rows: the tiny BERT learns the intent words (held-out macro-F1 1.0 at 60 steps)
    cfg = bank_cfg(tiny_models, root, model="bert", **{"train.max_steps": 40, "train.batch_size": 16})
    bank = train_bank(cfg, progress=False).output
    new_rows(320, 5).to_csv(root / "good.csv", index=False)
    new_rows(320, 6, shuffle_older=True).to_csv(root / "shuffled.csv", index=False)
    return root, bank


def answers(bank_dir) -> list:
    bank = AdapterBank.open(bank_dir)
    try:
        return [bank.logits(PROBE, bank.resolve_all([s] * len(PROBE))) for s in ("app", "web", None)]
    finally:
        bank.close()


def test_a_shuffled_label_candidate_is_refused_everywhere_and_the_bank_is_untouched(trained):
    root, bank = trained
    before = (bank / "bank.json").read_bytes()
    report = refresh(root / "shuffled.csv", bank=bank, time_column="day", holdout=0.3, epochs=2)
    assert [r["decision"] for r in report.results] == ["kept"] * 3
    for r in report.results:
        gate = r["gate"]
        assert gate["high"] < 0 and not gate["promote"], r["why"]  # clearly worse on the newest, true rows
        assert r["held_out_rows"] >= 30
    assert (bank / "bank.json").read_bytes() == before
    assert not (bank / "versions").exists()


def test_a_refresh_promotes_a_candidate_that_passes_and_rollback_restores_the_exact_answers(trained):
    root, bank = trained
    original = answers(bank)
    dry = refresh(root / "good.csv", bank=bank, time_column="day", holdout=0.3, epochs=2, dry_run=True)
    assert {r["decision"] for r in dry.results} <= {"would promote (dry run)", "kept"}
    assert not (bank / "versions").exists() and history(bank) == []
    report = refresh(root / "good.csv", bank=bank, time_column="day", holdout=0.3, epochs=2)
    promoted = [r for r in report.results if r["decision"] == "promoted"]
    assert promoted, [r["why"] for r in report.results]
    for r in promoted:
        assert r["gate"]["low"] > -r["gate"]["margin"]
        assert production(bank, r["adapter"]) == r["new_version"] == 2
    moves = [h for h in history(bank) if h["action"] == "promote"]
    assert {h["adapter"] for h in moves} == {r["adapter"] for r in promoted}
    assert all(h["reason"].startswith("refresh: ") for h in moves)
    refreshed = answers(bank)
    assert any(not np.allclose(a, b) for a, b in zip(original, refreshed))
    result = runner.invoke(app, ["bank", "rollback", str(bank), "--all", "--reason", "test"])
    assert result.exit_code == 0, result.output
    for a, b in zip(original, answers(bank)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows.drop(columns=["text"]), "question 'default' needs column 'text'"),
        (
            lambda rows: rows.assign(label=["strong"] * 99 + ["huge"]),
            "labels question 'default' does not know: huge",
        ),
        (lambda rows: rows.drop(columns=["platform"]), "routes rows by column 'platform'"),
    ],
)
def test_rows_that_do_not_fit_are_refused_in_one_line_before_training(trained, tmp_path, change, message):
    _, bank = trained
    bad = tmp_path / "bad.csv"
    change(new_rows(100, 7)).to_csv(bad, index=False)
    before = (bank / "bank.json").read_bytes()
    result = runner.invoke(app, ["refresh", "--bank", str(bank), "--data", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output and (bank / "bank.json").read_bytes() == before


def test_the_time_cut_holds_out_the_newest_rows():
    rows = pd.DataFrame({"when": [f"2026-03-0{d}" for d in range(1, 10)] + ["2026-02-28"], "x": range(10)})
    split = cut(rows, holdout=0.2, time_column="when", seed=0, source="f.csv")
    assert sorted(split.held_out["when"]) == ["2026-03-08", "2026-03-09"]
    assert "newest 20%" in split.how
    with pytest.raises(PeftkitError, match="row 2 of f.csv"):
        cut(
            rows.assign(when=["2026-03-01", "soon"] + ["2026-03-02"] * 8),
            holdout=0.2,
            time_column="when",
            seed=0,
            source="f.csv",
        )
    random_split = cut(rows, holdout=0.3, time_column=None, seed=0, source="f.csv")
    assert len(random_split.held_out) == 3 and "random" in random_split.how


def test_the_gate_metric_equals_the_task_metric_and_the_gate_follows_the_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 2 * np.eye(3)[y]
    for name in ("accuracy", "macro_f1"):
        out = TASKS["classification"].decode(logits)
        assert _metric(TASKS["classification"], name, y, out) == pytest.approx(
            TASKS["classification"].metrics(y, out)[name]
        )
    ordinal = TASKS["ordinal"].decode(logits[:, :2])
    assert _metric(TASKS["ordinal"], "mae", y, ordinal) == pytest.approx(
        TASKS["ordinal"].metrics(y, ordinal)["mae"]
    )
    noise = rng.normal(size=(200, 3))
    worse = judge("classification", y, logits, noise, current_decision=IDENTITY, candidate_decision=IDENTITY)
    assert not worse.promote and worse.high < 0
    same = judge("classification", y, logits, logits, current_decision=IDENTITY, candidate_decision=IDENTITY)
    assert same.promote and same.low == same.high == 0
    few = judge(
        "classification",
        y[:10],
        logits[:10],
        logits[:10],
        current_decision=IDENTITY,
        candidate_decision=IDENTITY,
    )
    assert not few.promote and "at least 30" in few.why


def test_a_killed_refresh_leaves_the_bank_as_it_was_and_can_run_again(trained, tmp_path):
    root, bank = trained
    before_file, before_answers = (bank / "bank.json").read_bytes(), answers(bank)
    versions_before = (
        sorted(p.name for p in (bank / "versions").rglob("v*")) if (bank / "versions").exists() else []
    )
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "peftkit", "refresh", "--bank", str(bank), "--data", str(root / "good.csv"),
             "--time-column", "day", "--holdout", "0.3", "--epochs", "2"],
            stderr=out, stdout=out, env={**os.environ, "PEFTKIT_DEBUG": "0"},
        )  # fmt: skip
        deadline = time.time() + 120
        while (
            "training a candidate" not in log.read_text() and time.time() < deadline and child.poll() is None
        ):
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert "training a candidate" in log.read_text()
    assert (bank / "bank.json").read_bytes() == before_file
    after = sorted(p.name for p in (bank / "versions").rglob("v*")) if (bank / "versions").exists() else []
    assert after == versions_before
    for a, b in zip(before_answers, answers(bank)):
        np.testing.assert_array_equal(a, b)
    again = refresh(root / "good.csv", bank=bank, time_column="day", holdout=0.3, epochs=2, dry_run=True)
    assert len(again.results) == 3
    assert question_folder(bank) == bank
