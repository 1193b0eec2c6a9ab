"""The CUDA benchmark: training samples/s and GPU memory per method over an 8-bit (LLM.int8) and a bf16 base, the
8-bit / bf16 memory ratio, and adapter-bank rows/s, on random-weight models at the real bases' shapes.

    python benchmarks/gpu/bench.py --out $OUT/bench.json          # what benchmarks/gpu/run.sh runs (~4 min on an H100)
    python benchmarks/gpu/bench.py --allow-cpu --layers 2 --steps 2 --shapes smollm2-135m --methods lora \\
        --out /tmp/smoke.json                                    # the code path on CPU; its figures mean nothing

Shapes (tests/gpu_models.py): SmolLM2-135M (Llama, 576 wide, 30 layers, 49k vocabulary) and multilingual-e5-small
(BERT, 384 wide, 12 layers, 250k vocabulary), at their full depth, so the memory figures are those of the real bases;
the weights are random, so nothing here says anything about accuracy.

Per (shape, method, precision), one `peftkit train` of `--warmup` + `--steps` optimizer steps on rows of about
`--words` tokens:
  samples/s       over the steps after the warm-up, each step timed with torch.cuda.synchronize() on both ends
  resident MiB    torch.cuda.memory_allocated() once the model is set up (base, adapter, head), before the first step
  load peak MiB   torch.cuda.max_memory_allocated() while loading (8-bit: quantising, and peft's float32 upcast)
  train peak MiB  torch.cuda.max_memory_allocated() over the training steps
  predict rows/s  `Predictor.logits` over `--rows` rows after training
and the ratios that compare runs of this one process: 8-bit / bf16 per method (memory and speed), and every cell's
samples/s against LoRA over bf16 of the same shape. Bank: a LoRA bank (global + one adapter per platform) per
precision, `AdapterBank.predict` rows/s on rows of mixed segments and of one segment.

Cells run in priority order and none starts after `--budget-s` seconds (they are listed under "skipped"); a cell that
fails is recorded under "errors" with its traceback's last lines, and the rest run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(
    0, str(REPO)
)  # tests.gpu_models, and peftkit itself where it is not installed (a lent machine)

SHAPES = ("smollm2-135m", "e5-small")
METHODS = ("lora", "adalora", "prefix", "bottleneck", "full")
PRECISIONS = {  # as tests/test_gpu.py: the production target's two bases
    "8bit": {"model.quant": "8bit"},
    "bf16": {"model.quant": "none", "model.dtype": "bfloat16"},
}
MIB = 2**20


def sync(cuda: bool) -> None:
    """Wait for the GPU's queued work, so wall-clock times cover it."""
    import torch

    if cuda:
        torch.cuda.synchronize()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=Path("runs/gpu-bench.json"), help="JSON to write (and .md beside)"
    )
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated peftkit methods")
    p.add_argument("--layers", type=int, default=None, help="override every shape's depth (smoke runs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--words", type=int, default=100, help="words per training row (one token each, ~105 tokens)"
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps not timed")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps timed")
    p.add_argument("--rows", type=int, default=512, help="rows for the prediction and bank throughput")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no cell after this many seconds")
    p.add_argument("--no-bank", action="store_true", help="skip the bank part")
    p.add_argument(
        "--allow-cpu", action="store_true", help="run without CUDA (figures meaningless: a smoke test)"
    )
    return p.parse_args(argv)


class Meter:
    """GPU memory and step times of one training run (a transformers TrainerCallback, built lazily so that --help
    needs no torch). Memory is counted from `start`, what was allocated before the run began."""

    def __init__(self, cuda: bool):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                meter.mark_setup()

            def on_step_begin(self, args, state, control, **kw):
                meter.sync()
                meter.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                meter.sync()
                meter.steps.append(time.perf_counter() - meter.t0)

            def on_train_end(self, args, state, control, **kw):
                meter.train_peak = meter.peak()

        self.cuda, self.callback = cuda, Callback()
        self.steps: list[float] = []
        self.t0 = 0.0
        self.resident = self.load_peak = self.train_peak = 0
        self.start = self._allocated()
        self._reset()

    def _allocated(self) -> int:
        import torch

        return torch.cuda.memory_allocated() if self.cuda else 0

    def _reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        sync(self.cuda)

    def peak(self) -> int:
        import torch

        return torch.cuda.max_memory_allocated() - self.start if self.cuda else 0

    def mark_setup(self) -> None:
        self.load_peak = self.peak()
        self.resident = self._allocated() - self.start
        self._reset()


def train_cell(shape: str, method: str, prec: str, base: Path, data: Path, root: Path, a, cuda: bool) -> dict:
    import gc

    import torch

    import peftkit
    from peftkit.config import load_config
    from tests import gpu_models

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    meter = Meter(cuda)
    cfg = load_config(
        None,
        {
            "model.name": str(base),
            "method.name": method,
            "data.train": str(data),
            "data.max_length": a.max_length,
            "train.max_steps": a.warmup + a.steps,
            "train.batch_size": a.batch_size,
            "train.logging_steps": 1000,
            "train.select_best": False,
            "output": str(root / f"{shape}-{method}-{prec}"),
            **PRECISIONS[prec],
        },
    )
    result = peftkit.train(cfg, progress=False, callbacks=[meter.callback])
    timed = meter.steps[a.warmup :]
    texts = gpu_models.rows(a.rows, words=a.words, seed=1)["text"].tolist()
    result.predictor.logits(texts[:32])  # warm-up
    sync(cuda)
    t0 = time.perf_counter()
    result.predictor.logits(texts)
    sync(cuda)
    predict_s = time.perf_counter() - t0
    cell = {
        "shape": shape,
        "method": method,
        "precision": prec,
        "dtype": result.manifest.dtype,
        "samples_per_s": round(a.batch_size * len(timed) / sum(timed), 2) if timed else None,
        "steps_timed": len(timed),
        "step_s_median": round(sorted(timed)[len(timed) // 2], 4) if timed else None,
        # None on CPU (--allow-cpu): the CUDA counters are the only memory this benchmark reads
        "resident_mib": round(meter.resident / MIB, 1) if cuda else None,
        "load_peak_mib": round(meter.load_peak / MIB, 1) if cuda else None,
        "train_peak_mib": round(meter.train_peak / MIB, 1) if cuda else None,
        "predict_rows_per_s": round(len(texts) / predict_s, 1),
        "trainable_params": result.manifest.trainable_params,
    }
    del result
    return cell


def bank_cell(shape: str, prec: str, base: Path, data: Path, root: Path, a, cuda: bool) -> dict:
    import peftkit
    from peftkit.config import load_config
    from tests import gpu_models

    cfg = load_config(
        None,
        {
            "model.name": str(base),
            "method.name": "lora",
            "data.train": str(data),
            "data.max_length": a.max_length,
            "train.max_steps": 2,
            "train.batch_size": a.batch_size,
            "train.select_best": False,
            "segments.column": "platform",
            "segments.min_rows": 10,
            "output": str(root / f"bank-{shape}-{prec}"),
            **PRECISIONS[prec],
        },
    )
    folder = peftkit.train(cfg, progress=False).output
    bank = peftkit.AdapterBank.open(folder)
    rows = gpu_models.rows(a.rows, words=a.words, seed=2)
    texts, mixed = rows["text"].tolist(), rows["platform"].tolist()
    timings = {}
    for name, segments in (("mixed", mixed), ("one_segment", ["app"] * len(texts))):
        bank.predict(texts[:32], segments=segments[:32])  # warm-up: loads the adapters
        sync(cuda)
        t0 = time.perf_counter()
        bank.predict(texts, segments=segments)
        sync(cuda)
        timings[name] = round(len(texts) / (time.perf_counter() - t0), 1)
    return {
        "shape": shape,
        "precision": prec,
        "adapters": sorted(bank.adapters),
        "rows": len(texts),
        "mixed_rows_per_s": timings["mixed"],
        "one_segment_rows_per_s": timings["one_segment"],
        "mixed_over_one_segment": round(timings["mixed"] / timings["one_segment"], 3),
    }


def ratios(cells: list[dict]) -> dict:
    """8-bit / bf16 per (shape, method), and samples/s against LoRA over bf16 of the same shape."""
    by = {(c["shape"], c["method"], c["precision"]): c for c in cells}
    out: dict = {"8bit_over_bf16": {}, "samples_per_s_vs_lora_bf16": {}}
    for (shape, method, prec), c in by.items():
        key = f"{shape}/{method}"
        other = by.get((shape, method, "bf16"))
        if prec == "8bit" and other:
            out["8bit_over_bf16"][key] = {
                k: round(c[k] / other[k], 3) if c[k] and other[k] else None
                for k in ("resident_mib", "load_peak_mib", "train_peak_mib", "samples_per_s")
            }
        lora = by.get((shape, "lora", "bf16"))
        if lora and lora["samples_per_s"] and c["samples_per_s"]:
            out["samples_per_s_vs_lora_bf16"][f"{key}/{prec}"] = round(
                c["samples_per_s"] / lora["samples_per_s"], 3
            )
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# GPU benchmark, {report['date']}: {report['device'].get('name', 'no CUDA')}",
        "",
        "| shape | method | precision | samples/s | resident MiB | load peak MiB | train peak MiB | predict rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["training"]:
        lines.append(
            f"| {c['shape']} | {c['method']} | {c['precision']} | {c['samples_per_s']} | {c['resident_mib']} | "
            f"{c['load_peak_mib']} | {c['train_peak_mib']} | {c['predict_rows_per_s']} |"
        )
    lines += ["", "| 8-bit / bf16 | resident | load peak | train peak | samples/s |", "|---|---|---|---|---|"]
    for key, r in report["ratios"]["8bit_over_bf16"].items():
        lines.append(
            f"| {key} | {r['resident_mib']} | {r['load_peak_mib']} | {r['train_peak_mib']} | {r['samples_per_s']} |"
        )
    if report["bank"]:
        lines += [
            "",
            "| bank | precision | mixed rows/s | one-segment rows/s | ratio |",
            "|---|---|---|---|---|",
        ]
        for b in report["bank"]:
            lines.append(
                f"| {b['shape']} | {b['precision']} | {b['mixed_rows_per_s']} | {b['one_segment_rows_per_s']} | "
                f"{b['mixed_over_one_segment']} |"
            )
    for what in ("skipped", "errors"):
        if report[what]:
            lines += ["", f"{what}:"] + [f"- {e['cell']}: {e.get('why', '')}" for e in report[what]]
    return "\n".join(lines) + "\n"


def device_facts(cuda: bool) -> dict:
    import torch

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],  # was the machine quiet?
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
    return facts


def plan(a) -> list[tuple]:
    """Cells in priority order: LoRA on every shape first (the baseline of every ratio), then the banks, then the
    other methods."""
    shapes, methods = a.shapes.split(","), a.methods.split(",")
    cells = [("train", s, "lora", p) for s in shapes for p in PRECISIONS if "lora" in methods]
    if not a.no_bank:
        cells += [("bank", shapes[0], None, p) for p in PRECISIONS]
    cells += [
        ("train", s, m, p)
        for s in shapes
        for m in methods
        if m != "lora"
        for p in PRECISIONS
        if not (m == "full" and p == "8bit")  # full fine-tuning refuses an 8-bit base
    ]
    return cells


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    from peftkit.artifacts.manifest import package_versions
    from peftkit.runtime import quiet_libraries
    from tests import gpu_models

    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print(
            "bench: no CUDA here; nothing measured (--allow-cpu runs the code path, its figures mean nothing)"
        )
        return 0
    quiet_libraries()
    began = time.perf_counter()
    report: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_facts(cuda),
        "versions": package_versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "training": [],
        "bank": [],
        "skipped": [],
        "errors": [],
    }
    with tempfile.TemporaryDirectory(prefix="peftkit-gpu-bench-") as tmp:
        root = Path(tmp)
        data = root / "rows.csv"
        n = max(200, 2 * a.batch_size * (a.warmup + a.steps))
        gpu_models.rows(n, words=a.words).to_csv(data, index=False)
        bases: dict[str, Path] = {}
        for kind, shape, method, prec in plan(a):
            name = f"{kind} {shape} {method or 'lora'} {prec}"
            if time.perf_counter() - began > a.budget_s:
                report["skipped"].append({"cell": name, "why": f"past the {a.budget_s:.0f} s budget"})
                continue
            print(f"bench: {name}", flush=True)
            try:
                if shape not in bases:
                    bases[shape] = gpu_models.save_model(
                        root / shape, shape, layers=a.layers, dtype="bfloat16"
                    )
                if kind == "train":
                    report["training"].append(
                        train_cell(shape, method, prec, bases[shape], data, root, a, cuda)
                    )
                else:
                    report["bank"].append(bank_cell(shape, prec, bases[shape], data, root, a, cuda))
            except Exception as exc:  # recorded with its traceback, and the other cells still run
                tail = traceback.format_exc().strip().splitlines()[-6:]
                report["errors"].append(
                    {"cell": name, "why": f"{type(exc).__name__}: {exc}", "traceback": tail}
                )
                print(f"bench: {name} failed: {type(exc).__name__}: {exc}", flush=True)
    report["ratios"] = ratios(report["training"])
    report["seconds"] = round(time.perf_counter() - began, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"bench: wrote {a.out} and {a.out.with_suffix('.md')} in {report['seconds']} s")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
