"""Quality of peftkit's defaults against what a careful user gets by hand, on small real data.

For each base x dataset x seed, on the same rows:

- peftkit, every method with its defaults (``peftkit.training.loop.train`` with only data, model, method, task, seed and
  ``data.max_length`` set): picks epochs, learning rates, pooling and the head's start itself, and keeps its best
  epoch on a validation file;
- a plain peft loop (written from the peft/transformers docs, below, ~40 lines): LoRA r=8/alpha=16 on peft's
  default targets, AdamW, linear schedule with 6% warm-up, the same epochs as peftkit's run, batch 16. A small
  sweep: lr {1e-3, 5e-3} x pooling {[CLS] + pooler (transformers' head), mean of token states}; the table shows
  each cell and the best cell (chosen on the test rows themselves: an optimistic bar for peftkit to meet);
- TF-IDF (character 1-3 grams within words) + logistic regression, C chosen by 3-fold CV on the train rows;
- the majority class of the train rows.

Every row is scored on the same held-out test rows with peftkit's metrics (`peftkit.tasks`); peftkit's validation
rows are neither trained on nor scored. Seeds change the split, the subsample and the initialisation. Reported:
mean over seeds and a 95% t-interval. Ordered labels are also trained as plain classification (``--task`` of the
dataset's ``also``), to compare the ordinal head with it on MAE and accuracy.

    python benchmarks/quality/run.py --out benchmarks/quality/results/quality.json
    python benchmarks/quality/run.py --bases minilm-l6 --datasets amazon-sentiment --seeds 42 --out /tmp/q.json

The results file is rewritten after every finished row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Dataset:
    source: str
    text: str
    label: str
    labels: list[str]
    task: str
    group: str | None
    also: str | None = None  # the other head to train on the same ordered labels


DATASETS = {
    "amazon-sentiment": Dataset(
        "builtin:amazon-snippets/polar",
        "text",
        "sentiment",
        ["negative", "positive"],
        "classification",
        "group",
    ),
    "amazon-intensity": Dataset(
        "builtin:amazon-snippets",
        "text",
        "intensity",
        ["weak", "medium", "strong"],
        "ordinal",
        "group",
        also="classification",
    ),
    "reviews-zh": Dataset(
        "builtin:reviews", "text", "label", ["negative", "positive"], "classification", None
    ),
}
METHODS = ("lora", "adalora", "bottleneck", "prefix")
SWEEP = [(lr, pooling) for lr in (1e-3, 5e-3) for pooling in ("cls", "mean")]


def make_split(ds: Dataset, seed: int, train_rows: int, val_rows: int, test_rows: int):
    """(train, val, test) frames: test and val are whole groups (a review's sentences stay together)."""
    from sklearn.model_selection import GroupShuffleSplit

    from peftkit.data import read_table

    frame = read_table(ds.source).drop_duplicates(ds.text).reset_index(drop=True)
    frame = frame[frame[ds.label].isin(ds.labels)].reset_index(drop=True)
    groups = frame[ds.group] if ds.group else np.arange(len(frame))
    held, rest = next(
        GroupShuffleSplit(n_splits=1, test_size=0.6, random_state=seed).split(frame, groups=groups)
    )
    held_frame, rest_frame = frame.iloc[held], frame.iloc[rest]
    held_groups = held_frame[ds.group] if ds.group else np.arange(len(held_frame))
    val_idx, test_idx = next(
        GroupShuffleSplit(n_splits=1, test_size=0.6, random_state=seed).split(held_frame, groups=held_groups)
    )
    pick = lambda f, n: f.sample(n=min(n, len(f)), random_state=seed).reset_index(drop=True)  # noqa: E731
    return (
        pick(rest_frame, train_rows),
        pick(held_frame.iloc[val_idx], val_rows),
        pick(held_frame.iloc[test_idx], test_rows),
    )


def peftkit_row(ds, base, method, task, seed, files, test, max_length, tmp, extra=None):
    from peftkit.config import load_config
    from peftkit.tasks import TASKS
    from peftkit.training.loop import train

    overrides = {
        "task": task,
        "data.train": str(files[0]),
        "data.eval": str(files[1]),
        "data.text_column": ds.text,
        "data.label_column": ds.label,
        "data.labels": ds.labels,
        "data.max_length": max_length,
        "model.name": base,
        "method.name": method,
        "train.seed": seed,
        "output": str(Path(tmp) / f"{base}-{method}-{task}-{seed}"),
        **(extra or {}),
    }
    started = time.perf_counter()
    result = train(load_config(None, overrides), progress=False, overwrite=True)
    y = test[ds.label].map({label: i for i, label in enumerate(ds.labels)}).to_numpy()
    t = TASKS[task]
    decoded = t.decode(result.predictor.logits(test[ds.text].tolist()))
    metrics = t.metrics(y, decoded)
    if (
        task != ds.task
    ):  # ordered labels trained as classes: also the ordinal metrics (MAE, Spearman) of its argmax
        metrics = TASKS[ds.task].metrics(y, decoded) | {"accuracy": metrics["accuracy"]}
    plan = result.manifest.train.plan
    return metrics | {
        "seconds": time.perf_counter() - started,
        "epochs": plan["epochs"],
        "lr": plan["lr"],
        "head_lr": plan["head_lr"],
        "pooling": result.manifest.pooling,
        "dtype": result.manifest.dtype,
        "kept_step": (getattr(result.manifest.train, "selection", None) or {}).get("kept_step"),
        "steps": result.manifest.train.steps,
    }


def plain_loop(base, train, test, ds, seed, epochs, lr, pooling, max_length):
    """What a user writes from the peft and transformers docs: LoRA on a sequence classifier, AdamW, a loop."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup, set_seed

    from peftkit import models
    from peftkit.tasks import TASKS

    set_seed(seed)
    ref = models.resolve(base)
    tok = models.load_tokenizer(ref)
    model = AutoModelForSequenceClassification.from_pretrained(str(ref.folder), num_labels=len(ds.labels))
    if (
        pooling == "mean"
    ):  # the sentence-transformers way: masked mean of token states instead of [CLS] + pooler
        # a fresh linear head: transformers' own heads expect token states (RoBERTa's reads position 0 itself)
        encoder, head = model.base_model, torch.nn.Linear(model.config.hidden_size, len(ds.labels))

        class MeanPooled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder, self.classifier = encoder, head

            def forward(self, input_ids, attention_mask, **_):
                states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(states.dtype)
                return self.classifier((states * mask).sum(1) / mask.sum(1))

        model = MeanPooled()
        targets, save = ["query", "value"], ["classifier"]
    else:
        targets, save = None, None
    lora = LoraConfig(
        task_type=None if pooling == "mean" else TaskType.SEQ_CLS,
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=targets,
        modules_to_save=save,
    )
    model = get_peft_model(model, lora)
    y = torch.tensor(train[ds.label].map({k: i for i, k in enumerate(ds.labels)}).to_numpy())
    texts = train[ds.text].tolist()
    batches = [list(range(i, min(i + 16, len(texts)))) for i in range(0, len(texts), 16)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    total = len(batches) * epochs
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * total), total)
    gen = torch.Generator().manual_seed(seed)

    def forward(batch_texts):
        enc = tok(batch_texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out if pooling == "mean" else out.logits

    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=gen).tolist()
        for b in range(len(batches)):
            idx = order[b * 16 : (b + 1) * 16]
            loss = torch.nn.functional.cross_entropy(forward([texts[i] for i in idx]), y[idx])
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad()
    model.eval()
    with torch.inference_mode():
        tt = test[ds.text].tolist()
        logits = torch.cat([forward(tt[i : i + 64]).float() for i in range(0, len(tt), 64)]).numpy()
    yt = test[ds.label].map({k: i for i, k in enumerate(ds.labels)}).to_numpy()
    t = TASKS["classification"]
    decoded = t.decode(logits)
    m = t.metrics(yt, decoded)
    if ds.task == "ordinal":
        m = TASKS["ordinal"].metrics(yt, decoded) | {"accuracy": m["accuracy"]}
    return m


def tfidf_row(ds, train, test):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline

    from peftkit.tasks import TASKS, Decoded

    to_idx = {k: i for i, k in enumerate(ds.labels)}
    pipe = make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True),
        LogisticRegressionCV(Cs=[0.1, 1, 10, 100], cv=3, max_iter=2000),
    )
    pipe.fit(train[ds.text], train[ds.label].map(to_idx))
    probs = pipe.predict_proba(test[ds.text])
    yt = test[ds.label].map(to_idx).to_numpy()
    kind = ds.task
    index = probs.argmax(1)
    return TASKS[kind].metrics(yt, Decoded(index=index, score=None, probs=probs))


def majority_row(ds, train, test):
    from peftkit.tasks import TASKS, Decoded

    to_idx = {k: i for i, k in enumerate(ds.labels)}
    major = int(train[ds.label].map(to_idx).value_counts().idxmax())
    yt = test[ds.label].map(to_idx).to_numpy()
    probs = np.eye(len(ds.labels))[np.full(len(yt), major)]
    return TASKS[ds.task].metrics(yt, Decoded(index=np.full(len(yt), major), score=None, probs=probs))


def interval(values: list[float]) -> dict:
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2:
        return {"mean": float(a.mean()), "low": None, "high": None, "n": len(a)}
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    return {
        "mean": float(a.mean()),
        "low": float(a.mean() - half),
        "high": float(a.mean() + half),
        "n": len(a),
    }


def summarise(runs: list[dict]) -> list[dict]:
    keys = sorted({(r["base"], r["dataset"], r["row"]) for r in runs})
    out = []
    for base, dataset, row in keys:
        rs = [r for r in runs if (r["base"], r["dataset"], r["row"]) == (base, dataset, row)]
        metrics = {
            m: interval([r["metrics"][m] for r in rs])
            for m in ("accuracy", "mae", "macro_f1")
            if m in rs[0]["metrics"]
        }
        out.append(
            {"base": base, "dataset": dataset, "row": row, "seeds": [r["seed"] for r in rs], **metrics}
        )
    for base, dataset in sorted({(s["base"], s["dataset"]) for s in out}):
        cells = [
            s
            for s in out
            if (s["base"], s["dataset"]) == (base, dataset) and s["row"].startswith("plain loop")
        ]
        if cells:  # the sweep's best cell by mean test accuracy: the bar peftkit's defaults are held to
            best = max(cells, key=lambda s: s["accuracy"]["mean"])
            out.append(best | {"row": "plain loop best: " + best["row"].removeprefix("plain loop ")})
    return out


def cell(s: dict, metric: str, missing: str = "-", dash: str = "-") -> str:
    """A summary row's metric as "mean (low-high)", or `missing`."""
    if metric not in s:
        return missing
    v = s[metric]
    return f"{v['mean']:.3f}" + (f" ({v['low']:.3f}{dash}{v['high']:.3f})" if v["low"] is not None else "")


def print_table(summary: list[dict]) -> None:
    for s in summary:
        print(
            f"{s['base']:22} {s['dataset']:17} {s['row']:34} acc {cell(s, 'accuracy'):24} mae {cell(s, 'mae')}"
        )


def markdown(summary: list[dict]) -> str:
    """The summary as one Markdown table: mean (95% interval) per row, for the README."""
    md = lambda s, m: cell(s, m, missing="", dash="–")  # noqa: E731
    lines = ["| base | dataset | row | seeds | accuracy | MAE |", "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['base']} | {s['dataset']} | {s['row']} | {len(s['seeds'])} | {md(s, 'accuracy')} | {md(s, 'mae')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--bases", default="minilm-l6,multilingual-e5-small")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--train-rows", type=int, default=300)
    ap.add_argument("--val-rows", type=int, default=150)
    ap.add_argument("--test-rows", type=int, default=600)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--no-sweep", action="store_true", help="skip the plain-loop sweep")
    ap.add_argument("--set", action="append", default=[], help="extra peftkit override for every peftkit row")
    ap.add_argument(
        "--markdown", action="store_true", help="print the results file at --out as Markdown; run nothing"
    )
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())["summary"]))
        return 0
    logging.basicConfig(level=logging.WARNING)
    from peftkit.config import parse_set
    from peftkit.models import cpu_bf16_units

    extra = parse_set(args.set)
    out = Path(args.out)
    runs: list[dict] = []
    if out.exists():
        runs = json.loads(out.read_text()).get("runs", [])
    done = {(r["base"], r["dataset"], r["row"], r["seed"]) for r in runs}

    def record(base, name, row, seed, metrics):
        runs.append({"base": base, "dataset": name, "row": row, "seed": seed, "metrics": metrics})
        summary = summarise(runs)
        payload = {
            "command": " ".join(["python", *sys.argv]),
            "settings": vars(args),
            "versions": {p: version(p) for p in ("torch", "transformers", "peft", "scikit-learn")},
            "machine": {"bf16_units": cpu_bf16_units(), "cores": os.cpu_count()},
            "summary": summary,
            "runs": runs,
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(out)
        print(
            f"{base} {name} {row} seed {seed}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)),
            flush=True,
        )

    for name in args.datasets.split(","):
        ds = DATASETS[name]
        for seed in [int(s) for s in args.seeds.split(",")]:
            train, val, test = make_split(ds, seed, args.train_rows, args.val_rows, args.test_rows)
            with tempfile.TemporaryDirectory() as tmp:
                files = (Path(tmp) / "train.csv", Path(tmp) / "val.csv")
                train.to_csv(files[0], index=False)
                val.to_csv(files[1], index=False)
                for row, fn in (("majority", majority_row), ("tfidf+logreg", tfidf_row)):
                    if ("-", name, row, seed) not in done:
                        record("-", name, row, seed, fn(ds, train, test))
                for base in args.bases.split(","):
                    epochs = None
                    for method in args.methods.split(","):
                        tasks = [ds.task] + ([ds.also] if ds.also and method == "lora" else [])
                        for task in tasks:
                            row = f"peftkit {method}" + (f" as {task}" if task != ds.task else "")
                            if (base, name, row, seed) in done:
                                continue
                            m = peftkit_row(
                                ds, base, method, task, seed, files, test, args.max_length, tmp, extra
                            )
                            epochs = epochs or int(round(m["epochs"]))
                            record(base, name, row, seed, m)
                    if args.no_sweep:
                        continue
                    if epochs is None:
                        from peftkit.config import load_config
                        from peftkit.training.plan import make_plan

                        epochs = int(make_plan(len(train), load_config(None, {"method.name": "lora"})).epochs)
                    for lr, pooling in SWEEP:
                        row = f"plain loop lr {lr:g} {pooling}"
                        if (base, name, row, seed) in done:
                            continue
                        started = time.perf_counter()
                        m = plain_loop(base, train, test, ds, seed, epochs, lr, pooling, args.max_length)
                        record(
                            base,
                            name,
                            row,
                            seed,
                            m | {"seconds": time.perf_counter() - started, "epochs": epochs},
                        )
    print_table(summarise(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
