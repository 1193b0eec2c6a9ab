"""Are explanations worth showing? Deletion faithfulness and cost per row of `peftkit predict --explain`.

(a) Faithfulness by deletion (the "comprehensiveness" test of ERASER, DeYoung et al. 2020): on held-out rows of the
adapter's own data (its training split, seed and template rebuilt from its manifest), delete from the text the K
tokens of the record's text field with the largest attribution towards the predicted class, and, apart, K random
tokens of the same field (several seeded draws), then predict again. If the attributions point at what the model
uses, the predicted class's probability drops far more for the top tokens than for random ones. Reported: the mean
drop for each, their ratio, and 95% intervals from a bootstrap over rows.

(b) Cost: each row explained alone (ms, p50/p90) against one plain prediction of the same row alone, in the same
process on the same rows; also the batched prediction cost per row, for scale.

    python benchmarks/decisions/explain.py --adapter runs/reviews-multilingual-e5-small-lora --rows 150
    python benchmarks/decisions/explain.py --recipe reviews/smollm2-135m_lora --train-steps 2 --rows 100 --cost-only

Without --adapter, one small adapter is trained first with ``peftkit train --recipe R --set data.max_train_rows=N``
(and ``train.max_steps`` with --train-steps: enough for the cost, not for faithfulness). The result is written to
benchmarks/decisions/results/explain_<base>.json with the command inside; the load average before and after says
whether other jobs shared the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import peftkit
from peftkit.artifacts.manifest import package_versions, read_manifest
from peftkit.config import RunConfig
from peftkit.data import load_splits
from peftkit.inference.explain import explain_records, template_text
from peftkit.runtime import quiet_libraries

RESULTS = Path(__file__).parent / "results"
BOOTSTRAP = 2000


def train_adapter(recipe: str, rows: int, steps: int | None, folder: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "peftkit",
        "train",
        "--recipe",
        recipe,
        "--set",
        f"data.max_train_rows={rows}",
    ]
    cmd += ["--set", "data.max_eval_rows=200", "--set", f"output={folder}"]
    if steps:
        cmd += ["--set", f"train.max_steps={steps}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def held_out_records(adapter: Path, rows: int) -> tuple[list[dict], str]:
    """`rows` held-out records of the adapter's own split (never trained on), and its template."""
    config = RunConfig.model_validate(read_manifest(adapter).config)
    # a subsample of the same held-out side: the split comes before the limit
    config.data.max_eval_rows = rows
    splits = load_splits(config.data, config.task, config.train.seed)
    return splits.eval_frame.to_dict("records"), config.data.template or "{" + config.data.text_column + "}"


def deletion_drops(model, records, template, field, k, draws, rng, explanations):
    """Per usable row: (drop in the predicted class's probability with the top-k tokens deleted, mean drop over
    `draws` random k-token deletions)."""
    top_drops, random_drops = [], []
    for record, e in zip(records, explanations):
        _, spans = template_text(record, template, mask=True)
        inside = [
            t
            for t in e.tokens
            if t.text.strip()
            and any(s <= t.start and t.end <= end for s, end in (spans or {}).get(field, []))
        ]
        if len(inside) < 2 * k:  # too short to tell top from random
            continue
        ranked = sorted(inside, key=lambda t: -t.attribution)[:k]  # most for the predicted class
        picks = [ranked] + [
            [inside[i] for i in rng.choice(len(inside), k, replace=False)] for _ in range(draws)
        ]
        texts = [_without(e.text, chosen) for chosen in picks]
        before = model.predict([e.text])[0].probabilities[e.label]
        after = [p.probabilities[e.label] for p in model.predict(texts)]
        top_drops.append(before - after[0])
        random_drops.append(before - float(np.mean(after[1:])))
    return np.array(top_drops), np.array(random_drops)


def _without(text: str, tokens) -> str:
    cut = sorted((t.start, t.end) for t in tokens)
    out, at = [], 0
    for s, e in cut:
        out.append(text[at:s])
        at = max(at, e)
    return "".join(out) + text[at:]


def bootstrap(top: np.ndarray, rand: np.ndarray, rng) -> dict:
    idx = rng.integers(0, len(top), size=(BOOTSTRAP, len(top)))
    t, r = top[idx].mean(axis=1), rand[idx].mean(axis=1)
    q = lambda x: [round(float(np.quantile(x, 0.025)), 4), round(float(np.quantile(x, 0.975)), 4)]  # noqa: E731
    return {"top_ci95": q(t), "random_ci95": q(r), "ratio_ci95": q(t / np.where(r == 0, np.nan, r))}


def costs(model, records, template, explanations) -> dict:
    """Explain-one-row vs predict-one-row times on the same rows, ms."""
    texts = [e.text for e in explanations]
    model.predict(texts[:1])  # warm
    single = []
    for text in texts:
        started = time.perf_counter()
        model.predict([text])
        single.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    model.predict(texts)
    batched = 1000 * (time.perf_counter() - started) / len(texts)
    explain = np.array([1000 * e.seconds for e in explanations])
    single = np.array(single)
    pct = lambda x, p: round(float(np.percentile(x, p)), 1)  # noqa: E731
    lengths = [len(e.tokens) for e in explanations]
    return {
        "rows": len(texts),
        "tokens_p50": int(np.median(lengths)),
        "tokens_p90": int(np.percentile(lengths, 90)),
        "explain_ms_p50": pct(explain, 50),
        "explain_ms_p90": pct(explain, 90),
        "predict_one_row_ms_p50": pct(single, 50),
        "predict_one_row_ms_p90": pct(single, 90),
        "predict_batched_ms_per_row": round(batched, 1),
        "explain_over_predict_one_row_p50": round(float(np.median(explain) / np.median(single)), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", type=Path, help="a trained adapter folder; default: train one with --recipe")
    p.add_argument("--recipe", default="reviews/multilingual-e5-small_lora")
    p.add_argument("--train-rows", type=int, default=800)
    p.add_argument("--train-steps", type=int, help="cap the training (for a cost-only run)")
    p.add_argument("--rows", type=int, default=150, help="held-out rows to explain")
    p.add_argument("--k", type=int, default=3, help="tokens deleted per row")
    p.add_argument("--draws", type=int, default=5, help="random deletions per row")
    p.add_argument("--n-steps", type=int, default=16)
    p.add_argument("--cost-only", action="store_true", help="skip the deletion test (an untrained adapter)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    quiet_libraries()
    load_before, uptime_before = (
        os.getloadavg(),
        subprocess.run(["uptime"], capture_output=True, text=True).stdout,
    )
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or train_adapter(
            args.recipe, args.train_rows, args.train_steps, Path(tmp) / "adapter"
        )
        manifest = read_manifest(adapter)
        records, template = held_out_records(adapter, args.rows)
        model = peftkit.load(str(adapter))
        # warm: Captum's import and the first passes' allocations are not a row's cost
        explain_records(model, records[:1], template=template, n_steps=args.n_steps)
        started = time.perf_counter()
        explanations = explain_records(model, records, template=template, n_steps=args.n_steps)
        wall = time.perf_counter() - started
        result = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "adapter": {
                "path": str(args.adapter) if args.adapter else f"trained here: {args.recipe}",
                "base": manifest.base.name,
                "method": manifest.method,
                "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
                "metrics": manifest.metrics,
                "train_rows": manifest.data.train_rows,
            },
            "template": template,
            "n_steps": args.n_steps,
            "explain_wall_s": round(wall, 1),
            "cost": costs(model, records, template, explanations),
        }
        gaps = np.array([abs(e.output - e.baseline_output) for e in explanations])
        deltas = np.array([abs(e.delta) for e in explanations])
        result["completeness"] = {
            "abs_delta_p50": round(float(np.median(deltas)), 5),
            "abs_delta_p90": round(float(np.percentile(deltas, 90)), 5),
            "abs_delta_over_gap_p50": round(float(np.median(deltas / np.maximum(gaps, 1e-6))), 4),
        }
        if not args.cost_only:
            rng = np.random.default_rng(args.seed)
            field = "text" if "{text" in template else next(iter(re.findall(r"{(\w+)", template)))
            top, rand = deletion_drops(model, records, template, field, args.k, args.draws, rng, explanations)
            result["faithfulness"] = {
                "field": field,
                "k": args.k,
                "random_draws": args.draws,
                "rows_used": len(top),
                "rows_skipped_too_short": len(records) - len(top),
                "mean_drop_top": round(float(top.mean()), 4),
                "mean_drop_random": round(float(rand.mean()), 4),
                "ratio": round(float(top.mean() / rand.mean()), 2) if rand.mean() else None,
                "rows_top_beats_random": round(float((top > rand).mean()), 3),
                **bootstrap(top, rand, np.random.default_rng(args.seed + 1)),
            }
    load_after = os.getloadavg()
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "uptime_before": uptime_before.strip(),
        "load_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "busy": bool(load_before[0] > 1.5 or load_after[0] > 2.5),  # 2 cores: this job alone reads about 2
    }
    result["versions"] = package_versions()
    out = args.out or RESULTS / f"explain_{manifest.base.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(
        json.dumps({k: result[k] for k in ("cost", "completeness", "faithfulness") if k in result}, indent=2)
    )


if __name__ == "__main__":
    main()
