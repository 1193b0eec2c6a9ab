"""Drift: the training profile (privacy rules, buckets) and `peftkit drift` (PSI per field, per question and segment,
scores as predict gives them, flags, errors), on the tiny models and training helpers of the other tests."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from peftkit.cli import app
from peftkit.config import load_config
from peftkit.data.profile import PROFILE, bucket_shares, profile_field, psi
from peftkit.errors import PeftkitError
from peftkit.evaluation.drift import drift_report
from peftkit.training.loop import train
from peftkit.training.segments import train_bank
from tests.test_bank import bank_cfg
from tests.test_questions import users

runner = CliRunner()
TEMPLATE = "orders {orders|0} from {city}: {text}"
CITIES = ["berlin", "paris", "rome"]


def shoppers(n: int, seed: int = 0, *, orders_shift: int = 0, cities=CITIES):
    """`users` rows plus a ``city`` (one planted rare value) and a unique ``user_id`` nobody else has."""
    rows = users(n, seed)
    rng = np.random.default_rng(seed)
    rows["orders"] = [str(int(o) + orders_shift) if o else "" for o in rows["orders"]]
    rows["city"] = rng.choice(cities, size=n)
    rows.loc[3, "city"] = "zanzibar-rare"  # seen once: never named by the profile
    rows["user_id"] = [f"U{seed}-{i:05d}-XQ" for i in range(n)]
    rows["text"] = rows["text"] + " " + rows["user_id"]  # an identifier inside free text
    return rows


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """One templated adapter (with a user id in its text) and one segment bank, trained on the tiny BERT/llama."""
    root = tmp_path_factory.mktemp("drift")
    shoppers(200).to_csv(root / "train.csv", index=False)
    shoppers(80, seed=1).to_csv(root / "eval.csv", index=False)  # a file: every train.csv row trains
    cfg = load_config(
        None,
        {
            "model.name": str(tiny_models["bert"]),
            "data.train": str(root / "train.csv"),
            "data.eval": str(root / "eval.csv"),
            "data.template": TEMPLATE,
            "train.max_steps": 4,
            "train.batch_size": 16,
            "output": str(root / "adapter"),
        },
    )
    adapter = train(cfg, progress=False).output
    bank = train_bank(bank_cfg(tiny_models, root), progress=False).output
    return {"adapter": adapter, "bank": bank, "root": root}


def test_psi_matches_a_hand_computed_value_and_floors_empty_buckets():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert math.isfinite(psi([0.0, 1.0], [0.5, 0.5])) and psi([0.0, 1.0], [0.5, 0.5]) > 1


def test_buckets_pool_rare_values_and_bin_numbers_by_quantile():
    spec = profile_field(["a"] * 60 + ["b"] * 30 + ["c"] * 5 + [None] * 5, mask=False)
    assert spec["kind"] == "categorical" and spec["buckets"] == ["empty", "a", "b", "other"]
    assert spec["shares"] == [0.05, 0.6, 0.3, 0.05]
    numbers = profile_field([str(i) for i in range(100)], mask=False)
    assert numbers["kind"] == "numeric" and len(numbers["edges"]) == 4  # 100 rows // 20: 5 bins
    assert bucket_shares(numbers, ["x", None, "1000"], mask=False) == [
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
        0,
        0,
        0,
        0,
        pytest.approx(1 / 3),
    ]


def test_the_profile_names_no_rare_value_no_identifier_and_no_raw_text(runs):
    text = (runs["adapter"] / PROFILE).read_text()
    profile = json.loads(text)
    assert set(profile["fields"]) == {"orders", "city", "text"}
    assert profile["fields"]["city"]["kind"] == "categorical"
    # most frequent first
    assert sorted(profile["fields"]["city"]["buckets"]) == sorted(["empty", *CITIES, "other"])
    assert profile["fields"]["text"]["kind"] == "text" and "unk_share" in profile["fields"]["text"]
    for secret in ("zanzibar", "U0-00003-XQ", "XQ", "buy", "shirt"):
        assert secret not in text
    scores = profile["scores"]
    assert scores["kind"] == "top" and sum(scores["shares"]) == pytest.approx(1, abs=1e-4)
    assert set(scores["predicted"]) == {"weak", "medium", "strong"}


def test_identical_rows_do_not_drift(runs):
    # the training rows against the fields' profile, the held-out rows against the scores' profile
    report = drift_report(str(runs["root"] / "train.csv"), adapter=runs["adapter"])
    fields = report["questions"]["default"]["all"]["fields"]
    assert all(f["psi"] < 1e-6 and f["flag"] is None for f in fields.values())
    assert fields["text"]["unk_share"]["recent"] == fields["text"]["unk_share"]["train"]
    held_out = drift_report(str(runs["root"] / "eval.csv"), adapter=runs["adapter"])["questions"]["default"][
        "all"
    ]
    assert held_out["scores"]["rows"] == 80 and held_out["scores"]["psi"] < 1e-3
    assert held_out["labels"]["psi"] < 1e-6 and held_out["labels"]["flag"] is None


def test_a_shifted_number_and_a_new_category_mix_are_flagged_the_rest_not(runs, tmp_path):
    recent = shoppers(200, seed=0, orders_shift=40, cities=["rome", "oslo"])
    recent.to_csv(tmp_path / "recent.csv", index=False)
    report = drift_report(str(tmp_path / "recent.csv"), adapter=runs["adapter"], scores=False)
    fields = report["questions"]["default"]["all"]["fields"]
    assert fields["orders"]["flag"] == "major" and fields["city"]["flag"] == "major"
    assert fields["text"]["flag"] is None  # same texts: unchanged
    assert [r["what"] for r in report["table"][:2]] == sorted(
        ["orders", "city"], key=lambda w: -fields[w]["psi"]
    )
    assert "scores" not in report["questions"]["default"]["all"]
    result = runner.invoke(app, ["drift", "--adapter", str(runs["adapter"]), "--data", str(tmp_path / "recent.csv"),
                                 "--no-scores", "--output", str(tmp_path / "r.md")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "orders" in result.stdout and "major" in (tmp_path / "r.md").read_text()
    failed = runner.invoke(app, ["drift", "--adapter", str(runs["adapter"]), "--data", str(tmp_path / "recent.csv"),
                                 "--no-scores", "--fail-on", "major", "--json"])  # fmt: skip
    assert failed.exit_code == 3 and json.loads(failed.stdout)["worst"] == "major"


def test_a_bank_gives_one_comparison_per_segment_adapter(runs, tmp_path):
    rows = users(160, seed=0)
    rows.to_csv(tmp_path / "recent.csv", index=False)
    report = drift_report(str(tmp_path / "recent.csv"), bank=runs["bank"])
    segments = report["questions"]["default"]
    assert set(segments) == {"global", "app", "web"}
    assert segments["global"]["rows"] == 160
    assert segments["app"]["rows"] == int((rows["platform"] == "app").sum())
    assert segments["app"]["scores"]["rows"] == segments["app"]["rows"]
    assert {(r["segment"], r["what"]) for r in report["table"]} >= {("app", "text"), ("web", "scores")}


def test_a_missing_column_names_the_column_and_the_question(runs, tmp_path):
    shoppers(40).drop(columns=["city"]).to_csv(tmp_path / "recent.csv", index=False)
    result = runner.invoke(
        app, ["drift", "--adapter", str(runs["adapter"]), "--data", str(tmp_path / "recent.csv")]
    )
    assert result.exit_code == 2
    assert "no column 'city'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    users(40).drop(columns=["platform"]).to_csv(tmp_path / "bank.csv", index=False)
    with pytest.raises(PeftkitError, match="segment column 'platform' for question 'default'"):
        drift_report(str(tmp_path / "bank.csv"), bank=runs["bank"], scores=False)


def test_an_adapter_trained_before_profiles_gets_a_clear_message(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs["adapter"], old)
    (old / PROFILE).unlink()
    result = runner.invoke(app, ["drift", "--adapter", str(old), "--data", str(runs["root"] / "train.csv")])
    assert result.exit_code == 2 and "trained before profiles" in result.stderr and "retrain" in result.stderr
