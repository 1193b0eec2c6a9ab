"""Baselines on the REAL built-in data, on exactly the rows the real-data recipes train and are scored on.

For each recipe and seed, `peftkit.data.load_splits` makes the recipe's split (the seed sets the split and the
subsample, as ``train.seed`` does for a run); every baseline is fitted on its training rows and scored on its
held-out rows with peftkit's own metrics (`peftkit.tasks`), so the figures sit beside an adapter's manifest:

- majority class (of the training rows);
- gradient boosting (``HistGradientBoosting*``) on the numeric behaviour columns (CDNOW only);
- TF-IDF (word 1-2 grams) + logistic regression on the text the adapter reads (the serialised template for CDNOW);
- BG/NBD, and Gamma-Gamma for spend, from ``lifetimes`` (CDNOW churn and value): fitted on the training customers'
  frequency / recency / age (no labels), turned into a churn probability by a logistic regression on the training
  labels, and into a tier by cutting the expected spend at the training rows' tier shares.

CDNOW recipes train on a 2,000/3,000-row subsample; the baselines run on those rows ("recipe rows") and on every
training-side row ("all rows", the held-out rows unchanged), since a tabular model would be given all of them.
Value is also scored as a regression of ``future_spend`` on the same rows. 3 seeds: mean and 95% t-interval.

    python benchmarks/tasks/real_baselines.py --out benchmarks/tasks/results/real_baselines.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from peftkit.config import load_config
from peftkit.data import load_splits
from peftkit.data.amazon import AMAZON_TASKS
from peftkit.data.cdnow import CDNOW_TASKS, CUTOFF, END
from peftkit.recipes import recipe_path
from peftkit.tasks import TASKS, Decoded

SEEDS = (42, 43, 44)
RECIPES = {  # name -> (the shipped recipe, the dataset's spec)
    "cdnow_churn": ("churn/minilm-l6_lora_cdnow", CDNOW_TASKS["churn"]),
    "cdnow_value": ("value_segment/minilm-l6_lora_cdnow", CDNOW_TASKS["value"]),
    "cdnow_conversion": ("conversion/minilm-l6_lora_cdnow", CDNOW_TASKS["conversion"]),
    "amazon_intensity": ("purchase_intent/minilm-l6_lora_amazon-intensity", AMAZON_TASKS["intensity"]),
    "amazon_sentiment": ("reviews/minilm-l6_lora_amazon", AMAZON_TASKS["sentiment"]),
}
HORIZON_DAYS = (END - CUTOFF).days  # 273: the label window BG/NBD forecasts


def decode(kind: str, probs: np.ndarray) -> Decoded:
    """Class probabilities (N, K) -> peftkit's prediction: argmax, or for ordinal the median rank as its head does."""
    if kind == "ordinal":
        above = 1 - np.cumsum(probs, axis=1)[:, :-1]  # P(y > k): (N, K-1)
        return Decoded(index=(above > 0.5).sum(axis=1), score=None, probs=probs)
    return Decoded(index=probs.argmax(axis=1), score=None, probs=probs)


def score(kind: str, y_true, decoded: Decoded) -> dict[str, float]:
    return TASKS[kind].metrics(np.asarray(y_true), decoded)


def majority(kind: str, train_y, eval_n: int, k: int) -> Decoded:
    prior = np.bincount(train_y, minlength=k) / len(train_y)
    return Decoded(index=np.full(eval_n, prior.argmax()), score=None, probs=np.tile(prior, (eval_n, 1)))


def gbm(kind: str, x_train, y_train, x_eval, seed: int) -> Decoded:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
    return decode(kind, model.predict_proba(x_eval))


def tfidf_lr(kind: str, train_texts, y_train, eval_texts) -> Decoded:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train_texts), y_train)
    return decode(kind, model.predict_proba(vectorizer.transform(eval_texts)))


def rfm(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """lifetimes' inputs from the features (all as of the cut-off): repeat purchase days, first-to-last days, age in
    days, and the mean value of the repeat purchase days (0 without one; lifetimes leaves the first purchase out)."""
    frequency = frame["purchase_days"].to_numpy() - 1
    recency = (frame["tenure_days"] - frame["days_since_last"]).to_numpy()
    age = frame["tenure_days"].to_numpy()
    repeat_spend = (frame["spend"] - frame["first_order_value"]).to_numpy()
    monetary = np.where(frequency > 0, repeat_spend / np.maximum(frequency, 1), 0.0)
    return frequency.astype(float), recency.astype(float), age.astype(float), monetary


def bgnbd_forecasts(train_frame, eval_frame) -> dict[str, np.ndarray]:
    """BG/NBD (and Gamma-Gamma) fitted on the training customers; forecasts for both sides over the label window."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    f, r, t, m = rfm(train_frame)
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(f, r, t)
    repeat = (f > 0) & (m > 0)  # Gamma-Gamma needs positive spend; 80 transactions in the log are $0
    ggf = GammaGammaFitter(penalizer_coef=0.0).fit(f[repeat], m[repeat])
    out = {}
    for side, frame in (("train", train_frame), ("eval", eval_frame)):
        fs, rs, ts, ms = rfm(frame)
        purchases = bgf.conditional_expected_number_of_purchases_up_to_time(HORIZON_DAYS, fs, rs, ts)
        alive = bgf.conditional_probability_alive(fs, rs, ts)
        value = ggf.conditional_expected_average_profit(fs, np.where(ms > 0, ms, 0.0))
        # Customers without a repeat purchase get the population mean value (what Gamma-Gamma gives at f = 0).
        value = np.where(fs > 0, value, ggf.conditional_expected_average_profit(0, 0))
        out[side] = {
            "purchases": np.asarray(purchases),
            "alive": np.asarray(alive),
            "spend": purchases * value,
        }
    return out


def bgnbd_classes(kind: str, forecast: dict, train_y, k: int, label: str) -> Decoded:
    """BG/NBD forecasts -> the task's classes, using only the training rows' labels."""
    from sklearn.linear_model import LogisticRegression

    if label == "churn":
        x = {s: np.column_stack([np.log1p(v["purchases"]), v["alive"]]) for s, v in forecast.items()}
        model = LogisticRegression().fit(x["train"], train_y)
        return decode(kind, model.predict_proba(x["eval"]))
    # value tier: cut the expected spend where the training rows' tier shares say (none = the lowest 70%...)
    shares = np.cumsum(np.bincount(train_y, minlength=k))[:-1] / len(train_y)
    cuts = np.quantile(forecast["train"]["spend"], shares)
    index = np.searchsorted(cuts, forecast["eval"]["spend"], side="right")
    return Decoded(index=index, score=None, probs=np.eye(k)[index])


def run_task(name: str, seed: int, bgnbd: bool) -> dict:
    recipe, spec = RECIPES[name]
    cfg = load_config(recipe_path(recipe), {"train.seed": seed})
    kind = cfg.task
    splits = load_splits(cfg.data, kind, seed)
    k = len(splits.labels)
    sides = {"recipe_rows": splits}
    if cfg.data.max_train_rows is not None:  # the same held-out rows, every training-side row
        full = cfg.data.model_copy(update={"max_train_rows": None})
        sides["all_rows"] = load_splits(full, kind, seed)
        assert sides["all_rows"].eval_texts == splits.eval_texts, "the held-out rows must not change"
    y_eval = np.asarray(splits.eval_labels)
    out = {"train_rows": {s: len(v.train_texts) for s, v in sides.items()}, "eval_rows": len(y_eval)}
    scores = {"majority": score(kind, y_eval, majority(kind, splits.train_labels, len(y_eval), k))}
    for side, part in sides.items():
        y_train = np.asarray(part.train_labels)
        if spec.numeric_columns:
            x_train = part.train_frame[spec.numeric_columns].to_numpy(float)
            x_eval = part.eval_frame[spec.numeric_columns].to_numpy(float)
            scores[f"gbm_numbers_{side}"] = score(kind, y_eval, gbm(kind, x_train, y_train, x_eval, seed))
        scores[f"tfidf_lr_text_{side}"] = score(
            kind, y_eval, tfidf_lr(kind, part.train_texts, y_train, part.eval_texts)
        )
    if bgnbd and spec.label_column in ("churn", "value_tier"):
        part = sides["all_rows"]
        forecast = bgnbd_forecasts(part.train_frame, part.eval_frame)
        decoded = bgnbd_classes(kind, forecast, np.asarray(part.train_labels), k, spec.label_column)
        scores["bgnbd_all_rows"] = score(kind, y_eval, decoded)
    out["scores"] = scores
    if spec.label_column == "value_tier":
        out["spend_regression"] = spend_regression(sides, seed, bgnbd)
    return out


def spend_regression(sides: dict, seed: int, bgnbd: bool) -> dict:
    """``future_spend`` in dollars, on the value recipe's own rows (so the customers match the tier scores)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    columns = CDNOW_TASKS["value"].numeric_columns
    eval_frame = sides["recipe_rows"].eval_frame
    y_eval = eval_frame["future_spend"].to_numpy(float)
    reg = TASKS["regression"]

    def scored(pred) -> dict:
        return reg.metrics(y_eval, Decoded(index=None, score=np.asarray(pred, float), probs=None))

    train = sides["recipe_rows"].train_frame
    out = {"mean": scored(np.full(len(y_eval), train["future_spend"].mean()))}
    out["mean"]["spearman"] = 0.0  # a constant ranks nothing; scipy's NaN would not be valid JSON
    for side, part in sides.items():
        model = HistGradientBoostingRegressor(random_state=seed)
        model.fit(part.train_frame[columns].to_numpy(float), part.train_frame["future_spend"].to_numpy(float))
        out[f"gbm_numbers_{side}"] = scored(model.predict(eval_frame[columns].to_numpy(float)))
    if bgnbd:
        out["bgnbd_gamma_gamma_all_rows"] = scored(
            bgnbd_forecasts(sides["all_rows"].train_frame, eval_frame)["eval"]["spend"]
        )
    return out


def summarise(per_seed: list[dict]) -> dict:
    """{metric: [v per seed]} -> {metric: {"mean", "ci95" (half-width, t with n-1 df), "per_seed"}}."""
    from scipy.stats import t

    out = {}
    for metric in per_seed[0]:
        values = np.array([m[metric] for m in per_seed], float)
        half = t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        out[metric] = {"mean": float(values.mean()), "ci95": float(half), "per_seed": values.tolist()}
    return out


def lifetimes_ready() -> str | None:
    """None if BG/NBD can run, else why not (one line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a pandas 4 deprecation notice at import, harmless
            import lifetimes  # noqa: F401
    except ImportError as exc:
        return f"lifetimes cannot be imported ({exc}); run `make setup` (the lock has its autograd and dill) to add BG/NBD"
    return None


def versions() -> dict[str, str]:
    out = {}
    for name in ("peftkit", "scikit-learn", "numpy", "pandas", "scipy", "lifetimes", "autograd", "dill"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def print_table(results: dict) -> None:
    print(f"{'task':<18}{'metric':<10}{'baseline':<28}{'mean':>8}{'± 95%':>8}")
    for name, r in results.items():
        rows = [(name, metrics, m) for metrics, m in r["scores"].items()]
        rows += [("cdnow_spend", metrics, m) for metrics, m in r.get("spend_regression", {}).items()]
        for task, baseline, m in rows:
            for metric in ("accuracy", "auc", "macro_f1", "mae", "rmse", "spearman"):
                if metric in m:
                    print(
                        f"{task:<18}{metric:<10}{baseline:<28}{m[metric]['mean']:>8.3f}{m[metric]['ci95']:>8.3f}"
                    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(RECIPES), help="comma-separated; default: all")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    started = time.perf_counter()
    skipped = lifetimes_ready()
    if skipped:
        print(f"note: {skipped}", file=sys.stderr)
    results = {}
    for name in args.tasks.split(","):
        task_started = time.perf_counter()
        runs = [run_task(name, seed, bgnbd=skipped is None) for seed in SEEDS]
        recipe, spec = RECIPES[name]
        results[name] = {
            "recipe": recipe,
            "data": f"builtin:{spec.name}",
            "kind": spec.task,
            "label": spec.label_column,
            "train_rows": runs[0]["train_rows"],
            "eval_rows": runs[0]["eval_rows"],
            "scores": {b: summarise([r["scores"][b] for r in runs]) for b in runs[0]["scores"]},
            "seconds": round(time.perf_counter() - task_started, 1),
        }
        if "spend_regression" in runs[0]:
            results[name]["spend_regression"] = {
                b: summarise([r["spend_regression"][b] for r in runs]) for b in runs[0]["spend_regression"]
            }
        print(f"{name}: {results[name]['seconds']} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python " + " ".join(sys.argv),
        "synthetic": False,
        "seeds": list(SEEDS),
        "interval": "95% t-interval half-width over the seeds (t with n-1 = 2 df)",
        "bgnbd": "skipped: " + skipped
        if skipped
        else "lifetimes BetaGeoFitter / GammaGammaFitter, penalizer 0",
        "setup": "make setup (lifetimes from lock/assets.txt; its autograd and dill from the lock's bench extra)",
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
