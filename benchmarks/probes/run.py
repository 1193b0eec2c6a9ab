"""How much the packaged bases can give on the real reviews before any adapter: logistic regression on frozen
features (pooler / last token / mean pooling), next to a character n-gram TF-IDF model that needs no base at all.

    python benchmarks/probes/run.py --model minilm-l6 --rows 3000 --eval-rows 1000 --max-length 128 \
        --out benchmarks/probes/results/minilm-l6.json
    python benchmarks/probes/run.py --model smollm2-135m --rows 1500 --eval-rows 500 --max-length 64 \
        --out benchmarks/probes/results/smollm2-135m.json

A probe far below TF-IDF says the base, not the adapter method, is what limits accuracy on this data.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from peftkit import models
from peftkit.config import load_config
from peftkit.data import load_splits
from peftkit.runtime import quiet_libraries


def features(model, tokenizer, texts: list[str], max_length: int, encoder: bool) -> dict[str, np.ndarray]:
    out: dict[str, list] = {"first_or_pooler": [], "last": [], "mean": []}
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            enc = tokenizer(
                texts[i : i + 32], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            res = model(**enc)
            h = res.last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            last = enc["attention_mask"].sum(1) - 1  # right padding: index of the last real token
            out["mean"].append(((h * mask).sum(1) / mask.sum(1)).numpy())
            out["last"].append(h[torch.arange(len(last)), last].numpy())
            out["first_or_pooler"].append((res.pooler_output if encoder else h[:, 0]).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    quiet_libraries()
    from transformers import AutoModel

    cfg = load_config(None, {"data.max_train_rows": args.rows, "data.max_eval_rows": args.eval_rows})
    s = load_splits(cfg.data, cfg.task, cfg.train.seed)
    base = models.resolve(args.model)
    tokenizer = models.load_tokenizer(base)
    model = AutoModel.from_pretrained(str(base.folder)).eval()
    encoder = base.config.get("model_type") == "bert"
    train_f = features(model, tokenizer, s.train_texts, args.max_length, encoder)
    eval_f = features(model, tokenizer, s.eval_texts, args.max_length, encoder)
    result = {
        "command": "python " + " ".join(sys.argv),
        "train_rows": len(s.train_texts),
        "eval_rows": len(s.eval_texts),
        "majority": float(np.bincount(s.eval_labels).max() / len(s.eval_labels)),
        "probes": {},
    }
    for name in train_f:
        clf = LogisticRegression(max_iter=3000).fit(train_f[name], s.train_labels)
        result["probes"][name] = float(clf.score(eval_f[name], s.eval_labels))
    tfidf = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=2)
    clf = LogisticRegression(max_iter=1000).fit(tfidf.fit_transform(s.train_texts), s.train_labels)
    result["char_tfidf_logreg"] = float(clf.score(tfidf.transform(s.eval_texts), s.eval_labels))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
