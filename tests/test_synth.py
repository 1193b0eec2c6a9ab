"""Synthetic shopper records: shape, determinism, label sets and balance, text diversity, templates, calibration, and
difficulty (numeric-only GBM beats chance; text + numbers beats numbers alone; nothing near perfect)."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest

from peftkit.config import DataConfig
from peftkit.data import build_texts, load_splits
from peftkit.data.files import template_columns
from peftkit.data.synth import SYNTH_TASKS, synthesize
from peftkit.data.template import Template
from peftkit.errors import PeftkitError

COMMON = [
    "user_id", "synthetic", "platform", "device", "lang", "tenure_days", "recency_days", "frequency_90d",
    "monetary_90d", "sessions_30d", "cart_adds_30d", "category_mix", "last_query", "chat", "review", "text",
]  # fmt: skip
INTS = ["tenure_days", "recency_days", "frequency_90d", "sessions_30d", "cart_adds_30d"]
STRINGS = ["user_id", "platform", "device", "lang", "category_mix", "last_query", "chat", "review", "text"]
LABELLED = [name for name, spec in SYNTH_TASKS.items() if spec.labels is not None]
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {name: synthesize(name, 2000, 0) for name in SYNTH_TASKS}


def test_task_specs():
    assert set(SYNTH_TASKS) == {
        "purchase_intent", "purchasing_power", "purchasing_power_score", "value_segment", "churn", "conversion",
    }  # fmt: skip
    assert SYNTH_TASKS["purchase_intent"].labels == ["weak", "medium", "strong"]
    assert SYNTH_TASKS["purchasing_power"].labels == ["low", "mid", "high"]
    assert SYNTH_TASKS["value_segment"].labels == ["browser", "interested", "buyer", "loyal_high_value"]
    assert SYNTH_TASKS["churn"].labels == ["stay", "churn"]
    assert SYNTH_TASKS["conversion"].labels == ["no_convert", "convert"]
    for name, spec in SYNTH_TASKS.items():
        assert spec.name == name and spec.label_column == name and spec.text_column == "text"
        assert spec.task == {"purchasing_power_score": "regression"}.get(name, spec.task)
        assert spec.task in ("classification", "ordinal", "regression")
        assert (spec.labels is None) == (spec.task == "regression")
        assert spec.summary and "\n" not in spec.summary
        # no leakage: neither the label nor the generator's probability reaches the features
        used = set(template_columns(spec.template)) | set(spec.numeric_columns)
        assert spec.label_column not in used and "true_conversion_prob" not in used
        assert set(spec.numeric_columns) <= set(COMMON)


def test_columns_dtypes_and_consistency(frames):
    for name, frame in frames.items():
        extra = ["true_conversion_prob"] if name == "conversion" else []
        assert list(frame.columns) == COMMON + extra + [name]
        assert frame["synthetic"].dtype == bool and frame["synthetic"].all()
        assert all(frame[c].dtype == np.int64 and (frame[c] >= 0).all() for c in INTS)
        assert frame["monetary_90d"].dtype == np.float64 and (frame["monetary_90d"] >= 0).all()
        assert all(pd.api.types.is_string_dtype(frame[c]) and frame[c].str.len().gt(0).all() for c in STRINGS)
        assert all(pd.api.types.is_numeric_dtype(frame[c]) for c in SYNTH_TASKS[name].numeric_columns)
    frame = frames["churn"]
    assert frame["user_id"].is_unique and frame["user_id"].iloc[123] == "synth-000123"
    assert set(frame["platform"]) == {"app", "web", "mini_program"}
    assert set(frame["device"]) == {"ios", "android", "desktop"}
    assert 0.4 < (frame["lang"] == "zh").mean() < 0.6
    assert (frame["recency_days"] <= frame["tenure_days"]).all()
    ordered = frame["frequency_90d"] > 0
    assert ((frame["monetary_90d"] > 0) == ordered).all() and (frame.loc[ordered, "recency_days"] < 90).all()
    for mix in frame["category_mix"]:
        shares = dict(part.split(":") for part in mix.split(";"))
        assert 1 <= len(shares) <= 3 and abs(sum(map(float, shares.values())) - 1) < 1e-9
    zh = frame["lang"] == "zh"
    assert (
        frame.loc[zh, "text"].str.contains(CJK).all() and not frame.loc[~zh, "text"].str.contains(CJK).any()
    )


def test_deterministic_and_seeded():
    one = synthesize("value_segment", 300, 7)
    pd.testing.assert_frame_equal(one, synthesize("value_segment", 300, 7))
    other = synthesize("value_segment", 300, 8)
    assert (one["text"] != other["text"]).mean() > 0.9 and not one["tenure_days"].equals(other["tenure_days"])
    # the same (rows, seed) is the same shoppers for every task; only the label differs
    churn = synthesize("churn", 300, 7)
    pd.testing.assert_frame_equal(one[COMMON], churn[COMMON])


def test_errors():
    with pytest.raises(PeftkitError, match="purchase_intent.*conversion"):
        synthesize("sentiment", 10, 0)
    for rows in (0, -3, 2.5, "10", True):
        with pytest.raises(PeftkitError, match="rows"):
            synthesize("churn", rows, 0)
    with pytest.raises(PeftkitError, match="seed"):
        synthesize("churn", 10, -1)
    assert len(synthesize("churn", 1, 0)) == 1


def test_labels_match_specs_and_are_balanced(frames):
    for name in LABELLED:
        labels, share = SYNTH_TASKS[name].labels, frames[name][name].value_counts(normalize=True)
        assert set(share.index) == set(labels), name
        assert share.min() > 0.10, (name, share.to_dict())
    for name, positive in (("churn", "churn"), ("conversion", "convert")):
        assert 0.2 <= (frames[name][name] == positive).mean() <= 0.4
    score = frames["purchasing_power_score"]["purchasing_power_score"]
    assert score.dtype == np.float64 and score.between(0, 1).all() and score.std() > 0.15
    # the ordinal tiers cut the same latent score
    tiers = frames["purchasing_power"]["purchasing_power"].map({"low": 0, "mid": 1, "high": 2})
    assert np.corrcoef(tiers, score)[0, 1] > 0.9


def test_text_diverse():
    frame = synthesize("purchase_intent", 2000, 3)
    assert frame["text"].nunique() / len(frame) > 0.95
    for column in ("last_query", "chat", "review"):
        assert frame[column].nunique() > 1000, column


def test_templates_render_every_row(frames):
    for name, frame in frames.items():
        template = SYNTH_TASKS[name].template
        rendered = [Template.parse(template).format.format(**row) for row in frame.to_dict("records")]
        assert all(row["last_query"] in text for row, text in zip(frame.to_dict("records"), rendered))
        assert build_texts(frame, text_column="text", template=template, source="synth") == rendered


@pytest.mark.parametrize("name", ["purchase_intent", "purchasing_power_score", "value_segment"])
def test_loads_through_peftkit(tmp_path, name):
    spec, path = SYNTH_TASKS[name], tmp_path / f"{name}.csv"
    synthesize(name, 200, 0).to_csv(path, index=False)
    data = DataConfig(
        train=str(path), label_column=spec.label_column, template=spec.template, labels=spec.labels
    )
    splits = load_splits(data, task=spec.task, seed=0)
    assert len(splits.train_texts) + len(splits.eval_texts) == 200
    assert splits.labels == spec.labels if spec.labels else splits.labels in (None, [])
    assert "| search: " in splits.train_texts[0]


def test_conversion_probability_is_calibrated():
    frame = synthesize("conversion", 10_000, 1)
    prob, hit = frame["true_conversion_prob"], frame["conversion"] == "convert"
    assert prob.between(0, 1).all() and abs(prob.mean() - hit.mean()) < 0.02
    for _, group in frame.assign(hit=hit).groupby(pd.qcut(prob, 5), observed=True):
        assert abs(group["true_conversion_prob"].mean() - group["hit"].mean()) < 0.05


def test_fast():
    start = time.perf_counter()
    synthesize("churn", 10_000, 0)
    assert time.perf_counter() - start < 2.0


def measure_baselines() -> dict[str, dict[str, float]]:
    """Per task, 3,000 rows, seed 0, 75/25 split: the majority class vs HistGradientBoosting on numeric_columns vs a
    char n-gram logistic regression (ridge for regression) on text + log1p-scaled numeric_columns. Accuracy, or R^2
    for regression. Every task has the same shoppers for one (rows, seed), so the features are built once."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from threadpoolctl import threadpool_limits

    numeric = SYNTH_TASKS["churn"].numeric_columns
    assert all(spec.numeric_columns == numeric for spec in SYNTH_TASKS.values())
    frames = {name: synthesize(name, 3000, 0) for name in SYNTH_TASKS}
    train_rows, test_rows = train_test_split(np.arange(3000), test_size=0.25, random_state=0)
    train, test = frames["churn"].iloc[train_rows], frames["churn"].iloc[test_rows]
    features = ColumnTransformer(
        [
            (
                "text",
                TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
                "text",
            ),
            ("numeric", make_pipeline(FunctionTransformer(np.log1p), StandardScaler()), numeric),
        ]
    )
    both_train, both_test = features.fit_transform(train), features.transform(test)
    scores = {}
    with threadpool_limits(1):  # the CPU is shared; oversubscribed OpenMP/BLAS threads crawl
        for name, frame in frames.items():
            y, y_test = frame[name].iloc[train_rows], frame[name].iloc[test_rows]
            if SYNTH_TASKS[name].task == "regression":
                gbm = HistGradientBoostingRegressor(random_state=0).fit(train[numeric], y)
                both = Ridge(alpha=3.0).fit(both_train, y)
                metric, majority = r2_score, np.full(len(y_test), y.mean())
            else:
                gbm = HistGradientBoostingClassifier(random_state=0).fit(train[numeric], y)
                both = LogisticRegression(C=2.0, max_iter=2000).fit(both_train, y)
                metric, majority = accuracy_score, np.full(len(y_test), y.mode()[0])
            scores[name] = {
                "majority": metric(y_test, majority),
                "gbm": metric(y_test, gbm.predict(test[numeric])),
                "text_lr": metric(y_test, both.predict(both_test)),
            }
    return scores


@pytest.fixture(scope="module")
def baselines() -> dict[str, dict[str, float]]:
    return measure_baselines()


@pytest.mark.slow  # about 4 s for all six tasks together
@pytest.mark.parametrize("name", list(SYNTH_TASKS))
def test_difficulty(baselines, name):
    score = baselines[name]
    if SYNTH_TASKS[name].task == "regression":  # R^2: the mean scores 0
        assert score["gbm"] > 0.1 and score["text_lr"] >= score["gbm"] + 0.1, score
    else:  # accuracy
        assert score["gbm"] >= score["majority"] + 0.03, score
        assert score["text_lr"] >= score["gbm"] + 0.05, score
    assert max(score.values()) < 0.95, score
