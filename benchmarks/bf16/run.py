"""float32 against the default dtype (bf16 on a CPU with AMX / AVX512-BF16): training speed, FLOP/s share of each
dtype's matmul peak, held-out accuracy, and prediction throughput with label agreement, all in one process so the
ratios compare runs taken minutes apart on the same machine.

    python benchmarks/bf16/run.py --out benchmarks/bf16/results/bf16.json          # every part, ~40 min
    python benchmarks/bf16/run.py --parts speed --out /tmp/speed.json             # one part
    python benchmarks/bf16/run.py --markdown benchmarks/bf16/results/bf16.json    # re-render the tables

Parts:
  kernels  one layer's attention (SDPA vs eager) and one dropout, forward + backward, per dtype
  speed    `train` on the recipe's rows for a fixed number of steps; samples/s over the steps after the warm-up,
           real-token FLOP/s = 4 N tokens / s against the matmul peak of the dtype used and of the best dtype
  quality  MiniLM's recipe on 1,000 rows and Gemma 3 270M's recipe, seeds 42-44, held-out accuracy per dtype
  predict  one adapter (trained in bf16) predicted through `peftkit.load` in float32 and in bf16: rows/s and the
           share of identical labels
  serve    a bank of one adapter trained in each dtype: AdapterBank.predict rows/s and `peftkit serve` requests/s
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import peftkit
from peftkit.artifacts.manifest import package_versions
from peftkit.compare.measure import PeakMemory, frozen_matmul_params, matmul_peak
from peftkit.config import load_config
from peftkit.data import read_table
from peftkit.models import cpu_bf16_units
from peftkit.recipes import recipe_path
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train

BASES = {  # recipe, batch size for the speed part, steps timed after `WARMUP`
    "minilm-l6": ("reviews/minilm-l6_lora", 32, 12),
    "smollm2-135m": ("reviews/smollm2-135m_lora", 16, 8),
}
DTYPES = ("float32", "auto")
# The quality part: each recipe at its own budget but MiniLM's rows (4,000 x 3 epochs would take 25 minutes here).
# SmolLM2 learns nothing at its recipe's budget (docs/quality.md), so the decoder row is Gemma 3 270M's recipe.
QUALITY = {
    "minilm-l6": ("reviews/minilm-l6_lora", {"data.max_train_rows": 1000}),
    "gemma3-270m": ("reviews/gemma3-270m_lora", {}),
}
# Speed variants: each change of issue 19 switched off alone, to show what it bought ("-" = as shipped).
VARIANTS = {  # name: (model.dtype, changes switched off, other overrides)
    "float32": ("float32", (), {}),
    "float32, nn.Dropout": ("float32", ("dropout",), {}),
    "auto": ("auto", (), {}),
    "auto, SDPA": ("auto", ("attention",), {}),
    "auto, nn.Dropout": ("auto", ("dropout",), {}),
    "auto, SDPA, nn.Dropout": ("auto", ("attention", "dropout"), {}),
    "8-bit (bitsandbytes)": ("auto", (), {"model.quant": "8bit"}),
}
WARMUP = 2
SEEDS = (42, 43, 44)


class StepClock(TrainerCallback):
    """Wall time of each optimizer step, and the real (unpadded) tokens the model read in training mode."""

    def __init__(self):
        self.steps: list[float] = []
        self.tokens: list[int] = []
        self._t0 = 0.0
        self._tokens = 0
        self.params = 0
        self.memory = PeakMemory("cpu")

    def on_train_begin(self, args, state, control, model=None, **kw):
        def count(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if module.training and mask is not None:
                self._tokens += int(mask.sum())

        model.register_forward_pre_hook(count, with_kwargs=True)
        self.params = frozen_matmul_params(model)  # what 4 N counts
        self.memory.reset()  # the training phase's peak RSS, apart from loading

    def on_step_begin(self, args, state, control, **kw):
        self._t0, self._tokens = time.perf_counter(), 0

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self._t0)
        self.tokens.append(self._tokens)


def run_train(recipe: str, overrides: dict, out: Path, clock: StepClock | None = None, without=()):
    """`train` on `recipe`; `without` switches off this issue's changes: "attention" (SDPA for a bf16 base on CPU, as
    transformers picks) and "dropout" (torch's nn.Dropout), by patching the two functions that decide them."""
    from peftkit import dropout, models

    cfg = load_config(recipe_path(recipe), {**overrides, "output": str(out)})
    callbacks = [clock] if clock else []
    saved = models.attention_implementation, dropout.install
    if "attention" in without:
        models.attention_implementation = lambda *a, **k: None
    if "dropout" in without:
        dropout.install = lambda model: 0
    try:
        return train(cfg, progress=False, callbacks=callbacks)
    finally:
        models.attention_implementation, dropout.install = saved


def _timed_ms(fn, *args, n: int = 20) -> float:
    for _ in range(3):
        fn(*args)
    start = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return 1000 * (time.perf_counter() - start) / n


def _sdpa(q, k, v, mask) -> None:
    torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()


def _eager(q, k, v, mask) -> None:  # as transformers' eager attention: softmax in float32
    w = torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask, dim=-1, dtype=torch.float32)
    (w.to(q.dtype) @ v).sum().backward()


def _dropout(layer, x) -> None:
    layer(x).sum().backward()


def part_kernels() -> dict:
    from peftkit.dropout import BitsDropout

    shapes = {
        "smollm2-135m (16 x 9 x 64 x 64, causal)": (16, 9, 64, 64, True),
        "minilm-l6 (32 x 12 x 64 x 32, padded)": (32, 12, 64, 32, False),
    }
    out: dict = {"attention_ms": {}, "dropout_ms": {}}
    for label, (b, h, s, d, causal) in shapes.items():
        row = {}
        for dtype in (torch.float32, torch.bfloat16):
            qkv = [torch.randn(b, h, s, d, dtype=dtype, requires_grad=True) for _ in range(3)]
            mask = torch.zeros(b, 1, s, s, dtype=dtype)
            if causal:
                mask = mask.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf"))
            else:
                mask[..., s - 14 :] = torch.finfo(dtype).min  # a padded tail
            name = str(dtype).removeprefix("torch.")
            row[f"sdpa {name}"] = _timed_ms(_sdpa, *qkv, mask)
            row[f"eager {name}"] = _timed_ms(_eager, *qkv, mask)
        out["attention_ms"][label] = row
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(832, 576, dtype=dtype, requires_grad=True)
        name = str(dtype).removeprefix("torch.")
        out["dropout_ms"][f"nn.Dropout {name}"] = _timed_ms(_dropout, torch.nn.Dropout(0.05), x)
        out["dropout_ms"][f"BitsDropout {name}"] = _timed_ms(_dropout, BitsDropout(0.05), x)
    return out


PREFIX_VARIANTS = {
    "prefix, float32": ("float32", (), {"method.name": "prefix"}),
    "prefix, auto": ("auto", (), {"method.name": "prefix"}),
    "prefix, auto, SDPA": ("auto", ("attention",), {"method.name": "prefix"}),
}


def part_speed(peaks: dict, variants: dict = VARIANTS) -> dict:
    rows = {}
    for base, (recipe, batch, steps) in BASES.items():
        n_rows = batch * (steps + WARMUP)
        for variant, (dtype, without, extra) in variants.items():
            clock = StepClock()
            with tempfile.TemporaryDirectory() as tmp:
                result = run_train(
                    recipe,
                    {
                        "model.dtype": dtype,
                        "data.max_train_rows": n_rows,
                        "data.max_eval_rows": 32,
                        "train.batch_size": batch,
                        "train.epochs": 1,
                        "train.select_best": False,
                        **extra,
                    },
                    Path(tmp) / "out",
                    clock,
                    without,
                )
                used = result.manifest.dtype
                n_params = clock.params
                peak_bytes = clock.memory.peak()
            timed, tokens = clock.steps[WARMUP:], clock.tokens[WARMUP:]
            seconds = sum(timed)
            flops = 4 * n_params * sum(tokens) / seconds
            rows[f"{base} {variant}"] = {
                "base": base,
                "variant": variant,
                "dtype_asked": dtype,
                "dtype_used": used,
                "batch_size": batch,
                "steps_timed": len(timed),
                "samples_per_second": batch * len(timed) / seconds,
                "median_step_seconds": statistics.median(timed),
                "real_tokens_per_step": sum(tokens) / len(tokens),
                "non_embedding_params": n_params,
                "quant": result.manifest.quant,
                "train_peak_rss_bytes": peak_bytes,
                "flops": flops,
                "share_of_used_peak": flops / peaks[used],
                "share_of_best_peak": flops / max(peaks.values()),
            }
            print(
                json.dumps(
                    {
                        k: rows[f"{base} {variant}"][k]
                        for k in ("base", "variant", "dtype_used", "samples_per_second", "share_of_used_peak")
                    }
                ),
                flush=True,
            )
    return rows


def part_quality(bases=tuple(QUALITY), dtypes=DTYPES, seeds=SEEDS) -> dict:
    rows = {}
    for base, (recipe, budget) in QUALITY.items():
        if base not in bases:
            continue
        for dtype in dtypes:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    over = {**budget, "model.dtype": dtype, "train.seed": seed}
                    result = run_train(recipe, over, Path(tmp) / "out")
                    seconds = time.perf_counter() - start
                rows[f"{base} {dtype} {seed}"] = {
                    "base": base,
                    "dtype_asked": dtype,
                    "dtype_used": result.manifest.dtype,
                    "seed": seed,
                    "accuracy": result.metrics["accuracy"],
                    "run_seconds": seconds,
                }
                print(json.dumps(rows[f"{base} {dtype} {seed}"]), flush=True)
    return rows


def part_predict() -> dict:
    texts = [str(t) for t in read_table("builtin:reviews")["text"].tolist()[-512:]]
    rows = {}
    for base, (recipe, _, _) in BASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            run_train(
                recipe, {"data.max_train_rows": 256, "data.max_eval_rows": 32, "train.max_steps": 8}, out
            )
            labels, speed = {}, {}
            for dtype in ("float32", "bfloat16"):
                predictor = peftkit.load(str(out), dtype=dtype)
                predictor.predict(texts[:64])  # warm-up
                start = time.perf_counter()
                labels[dtype] = [p.label for p in predictor.predict(texts)]
                speed[dtype] = len(texts) / (time.perf_counter() - start)
                del predictor
        same = sum(a == b for a, b in zip(labels["float32"], labels["bfloat16"])) / len(texts)
        rows[base] = {
            "rows": len(texts),
            "rows_per_second": speed,
            "ratio": speed["bfloat16"] / speed["float32"],
            "identical_labels": same,
        }
        print(json.dumps({base: rows[base]}), flush=True)
    return rows


def part_serve() -> dict:
    """A bank of one adapter trained in each dtype: `AdapterBank.predict` rows/s (what serve calls per batch) and
    `peftkit serve` requests/s at 8 concurrent one-row clients (serving benchmark's load test, same machine)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
    from run import serve_load  # benchmarks/serving/run.py

    from peftkit.inference.bank import AdapterBank, build_bank

    texts = [str(t) for t in read_table("builtin:reviews")["text"].tolist()[-512:]]
    rows = {}
    for base, (recipe, _, _) in BASES.items():
        for dtype in DTYPES:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "global"
                over = {"model.dtype": dtype, "data.max_train_rows": 256, "data.max_eval_rows": 32}
                run_train(recipe, {**over, "train.max_steps": 8}, out)
                build_bank(Path(tmp) / "bank", {"global": out})
                bank = AdapterBank.open(Path(tmp) / "bank")
                bank.predict(texts[:64])  # warm-up
                start = time.perf_counter()
                bank.predict(texts)
                bank_rps = len(texts) / (time.perf_counter() - start)
                del bank
                served = serve_load(Path(tmp) / "bank", texts, ["global"], [8], 20.0)[0]
            rows[f"{base} {dtype}"] = {
                "base": base,
                "dtype_asked": dtype,
                "bank_rows_per_second": bank_rps,
                "serve": served,
            }
            print(json.dumps(rows[f"{base} {dtype}"]), flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", ""]
    if "peaks" in result:
        peaks = result["peaks"]
        lines += ["| square matmul peak | GFLOP/s |", "|---|---|"]
        lines += [f"| {d} | {v / 1e9:,.0f} |" for d, v in peaks.items()] + [""]
    if "kernels" in result:
        k = result["kernels"]
        lines += [
            "| one layer's attention, fwd + bwd (ms) | "
            + " | ".join(next(iter(k["attention_ms"].values())))
            + " |"
        ]
        lines += ["|---" * (1 + len(next(iter(k["attention_ms"].values())))) + "|"]
        for shape, row in k["attention_ms"].items():
            lines.append(f"| {shape} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
        lines += ["", "| dropout p=0.05 on 832 x 576, fwd + bwd | ms |", "|---|---|"]
        lines += [f"| {name} | {v:.2f} |" for name, v in k["dropout_ms"].items()] + [""]
    for part in ("speed", "prefix"):
        if part not in result:
            continue
        lines += [
            "| base | run | dtype | samples/s | vs float32 | real-token FLOP/s | of its dtype's peak | of the best peak "
            "| peak RSS |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        rows = {k: r for k, r in result[part].items() if not k.endswith("ratio")}
        for r in rows.values():
            # The first row of each base is its float32 run: the ratio's denominator.
            base_f32 = next(x for x in rows.values() if x["base"] == r["base"])["samples_per_second"]
            lines.append(
                f"| {r['base']} | {r['variant']} | {r['dtype_used']} | {r['samples_per_second']:.1f} | "
                f"{r['samples_per_second'] / base_f32:.2f}x | {r['flops'] / 1e9:,.0f} G | "
                f"{100 * r['share_of_used_peak']:.0f}% | {100 * r['share_of_best_peak']:.0f}% | "
                f"{r['train_peak_rss_bytes'] / 2**30:.2f} GiB |"
            )
        lines.append("")
    if "quality" in result:
        lines += [
            "| base | dtype | accuracy, seeds " + ", ".join(map(str, SEEDS)) + " | mean |",
            "|---|---|---|---|",
        ]
        groups: dict = {}
        for r in result["quality"].values():
            groups.setdefault((r["base"], r["dtype_used"]), []).append(r["accuracy"])
        for (base, dtype), accs in groups.items():
            lines.append(
                f"| {base} | {dtype} | {', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(accs):.3f} |"
            )
        lines.append("")
    if "predict" in result:
        lines += [
            "| base | float32 rows/s | bf16 rows/s | ratio | identical labels |",
            "|---|---|---|---|---|",
        ]
        for base, r in result["predict"].items():
            s = r["rows_per_second"]
            lines.append(
                f"| {base} | {s['float32']:.1f} | {s['bfloat16']:.1f} | {r['ratio']:.2f}x | "
                f"{100 * r['identical_labels']:.1f}% of {r['rows']} |"
            )
        lines.append("")
    if "serve" in result:
        lines += [
            "| base | dtype | bank rows/s (512 rows) | serve requests/s, 8 clients | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for r in result["serve"].values():
            sv = r["serve"]
            lines.append(
                f"| {r['base']} | {r['dtype_asked']} | {r['bank_rows_per_second']:.1f} | {sv['requests_per_second']:.1f} | "
                f"{sv['latency_ms_p50']:.0f} | {sv['latency_ms_p99']:.0f} |"
            )
    return "\n".join(lines)


def _quality_from(spec: str | None):
    if spec is None:
        return part_quality
    base, dtype, seeds = spec.split(":")
    return lambda: part_quality((base,), (dtype,), tuple(int(x) for x in seeds.split(",")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="kernels,speed,predict,serve,quality")
    p.add_argument(
        "--out", default=None, help="JSON file; parts already in it are kept unless named in --parts"
    )
    p.add_argument("--markdown", default=None, help="print the tables of a results file and exit")
    p.add_argument(
        "--quality", default=None, help="quality part for BASE:DTYPE:SEEDS only (gemma3-270m:auto:42,43)"
    )
    args = p.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    quiet_libraries()
    out = Path(args.out) if args.out else None
    result = json.loads(out.read_text()) if out and out.exists() else {}
    result.update(
        {
            "command": "python " + " ".join(sys.argv),
            "versions": package_versions(),
            "threads": torch.get_num_threads(),
            "cpu_bf16_units": cpu_bf16_units(),
        }
    )
    parts = args.parts.split(",")
    if "speed" in parts or "peaks" not in result:
        result["peaks"] = {d: matmul_peak("cpu", getattr(torch, d))["flops"] for d in ("float32", "bfloat16")}
    for part in parts:
        fn = {
            "prefix": lambda: part_speed(result["peaks"], PREFIX_VARIANTS),
            "kernels": part_kernels,
            "speed": lambda: part_speed(result["peaks"]),
            "quality": _quality_from(args.quality),
            "predict": part_predict,
            "serve": part_serve,
        }[part]
        result[part] = fn()
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
