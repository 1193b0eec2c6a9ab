"""The main job (`peftkit train` with no arguments) against what a user would do instead, on the same rows.

Trains the default recipe (or the recipes given) as shipped, and a character n-gram TF-IDF + logistic regression on
exactly the same train rows, then scores both on the same held-out rows. The 95% intervals are a paired bootstrap
over the held-out rows (one training seed: a seed of the default recipe costs minutes on 2 cores), so they say how
sure the comparison is on these rows, not how much another seed would move it.

    python benchmarks/default_job/run.py --out benchmarks/default_job/results/default.json
    python benchmarks/default_job/run.py --recipe reviews/minilm-l6_lora --out benchmarks/default_job/results/minilm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV

import peftkit
from peftkit import models
from peftkit.artifacts.manifest import package_versions
from peftkit.cli.options import DEFAULT_RECIPE
from peftkit.config import load_config
from peftkit.data import load_splits
from peftkit.recipes import recipe_path
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train

BOOTSTRAP = 2000  # resamples of the held-out rows


def tfidf_predictions(splits) -> np.ndarray:
    """Character 1-2-grams (Chinese has no spaces to split words on) + logistic regression, its regularisation
    chosen by 3-fold cross-validation on the train rows only, as a careful user would."""
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = LogisticRegressionCV(Cs=[0.25, 1.0, 4.0, 16.0], cv=3, max_iter=2000)
    clf.fit(vec.fit_transform(splits.train_texts), splits.train_labels)
    return clf.predict(vec.transform(splits.eval_texts))


def interval(correct: np.ndarray, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(correct), size=(BOOTSTRAP, len(correct)))
    means = correct[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", help=f"recipe(s) to run (default: {DEFAULT_RECIPE})")
    p.add_argument("--out", help="write the results here as JSON")
    args = p.parse_args()
    quiet_libraries()
    rng = np.random.default_rng(0)
    rows = []
    for recipe in args.recipe or [DEFAULT_RECIPE]:
        cfg = load_config(recipe_path(recipe))
        splits = load_splits(cfg.data, cfg.task, cfg.train.seed)
        labels = np.asarray(splits.eval_labels)
        started = time.perf_counter()
        base_pred = tfidf_predictions(splits)
        tfidf_seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(recipe_path(recipe), {"output": out})
            started = time.perf_counter()
            manifest = train(cfg, progress=False).manifest
            train_wall = time.perf_counter() - started
            logits = peftkit.load(out).logits(splits.eval_texts)
        # The predictor's labels are the split's label names in head order; the split's eval labels are indices.
        pred = logits.argmax(axis=1)
        ours, theirs = (pred == labels).astype(float), (base_pred == labels).astype(float)
        assert abs(ours.mean() - manifest.metrics["accuracy"]) < 1e-9, (
            "reloaded adapter disagrees with training"
        )
        rows.append(
            {
                "recipe": recipe,
                "command": f"peftkit train --recipe {recipe}",
                "seed": cfg.train.seed,
                "train_rows": len(splits.train_texts),
                "eval_rows": len(labels),
                "majority_accuracy": float(np.bincount(labels).max() / len(labels)),
                "dtype": manifest.dtype,
                "peftkit": {
                    "accuracy": float(ours.mean()),
                    "accuracy_95": interval(ours, rng),
                    "metrics": manifest.metrics,
                    "train_seconds": manifest.train.seconds,
                    "wall_seconds": round(train_wall, 1),
                },
                "char_tfidf_logreg": {
                    "accuracy": float(theirs.mean()),
                    "accuracy_95": interval(theirs, rng),
                    "seconds": round(tfidf_seconds, 1),
                },
                "difference_95": interval(ours - theirs, rng),
            }
        )
        r = rows[-1]
        print(
            f"{recipe}: peftkit {r['peftkit']['accuracy']:.3f} {r['peftkit']['accuracy_95']} "
            f"({r['dtype']}, {r['peftkit']['train_seconds']:.0f} s) | TF-IDF {r['char_tfidf_logreg']['accuracy']:.3f} "
            f"{r['char_tfidf_logreg']['accuracy_95']} | difference 95% {r['difference_95']}",
            flush=True,
        )
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "bf16_units": models.cpu_bf16_units(),
        },
        "versions": package_versions(),
        "results": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
