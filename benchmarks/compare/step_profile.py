"""Where a CPU training step's time goes: the linear layers' matmuls (the 4·N the FLOP/s figure counts) against
attention, element-wise work, norms and the rest, from torch's profiler over a few steps of a real `peftkit train`.

    python benchmarks/compare/step_profile.py --recipe reviews/smollm2-135m_lora \
        --out benchmarks/compare/results/step_profile_smollm2-135m.json
    python benchmarks/compare/step_profile.py --recipe reviews/minilm-l6_lora --batch-size 32 \
        --out benchmarks/compare/results/step_profile_minilm-l6.json

Read with matmul_shapes.py: if the linear layers run near the matmul peak at these shapes, the FLOP/s share of a run
is bounded by the linear layers' share of the step's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

from peftkit.config import load_config
from peftkit.recipes import recipe_path
from peftkit.runtime import quiet_libraries
from peftkit.training.loop import train

# Profiler op names by what they do. Self time is counted, so each microsecond lands in exactly one leaf op.
CATEGORIES = {
    "linear matmuls (mm, addmm)": ("aten::mm", "aten::addmm"),
    "attention (bmm, sdpa, softmax)": (
        "aten::bmm",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "sdpa",
        "flash",
    ),
    "element-wise (add, mul, silu, gelu, dropout, copies)": (
        "aten::add",
        "aten::mul",
        "aten::silu",
        "aten::gelu",
        "aten::div",
        "aten::sub",
        "aten::neg",
        "aten::copy_",
        "aten::clone",
        "aten::cat",
        "aten::bernoulli",
        "aten::masked_fill",
        "aten::where",
        "aten::fill_",
        "aten::zero_",
        "aten::threshold",
        "aten::sigmoid",
        "aten::tanh",
    ),
    "norms (rms, layer norm, pow, mean, rsqrt)": (
        "aten::native_layer_norm",
        "aten::pow",
        "aten::mean",
        "aten::rsqrt",
    ),
    "optimizer (AdamW, grad norm)": ("aten::_foreach", "Optimizer", "aten::norm", "aten::linalg_vector_norm"),
}


class ProfileSteps(TrainerCallback):
    """Profile optimizer steps [first, last): the opening steps (allocator and kernel warm-up) stay out."""

    def __init__(self, first: int, last: int):
        self.first, self.last, self.prof, self.seconds = first, last, None, 0.0

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.first:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and state.global_step == self.last:
            self.seconds = time.perf_counter() - self._t0
            self.prof.__exit__(None, None, None)


def category(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if any(name.startswith(p) or p in name for p in prefixes):
            return cat
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="reviews/smollm2-135m_lora")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--first", type=int, default=3)
    p.add_argument("--last", type=int, default=9)
    p.add_argument(
        "--dtype", default="auto", help="model.dtype: auto (bf16 where the CPU has bf16 units), float32, ..."
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    quiet_libraries()
    rows = args.batch_size * (args.last + 2)
    cfg = load_config(
        recipe_path(args.recipe),
        {
            "data.max_train_rows": rows,
            "data.max_eval_rows": 32,
            "train.batch_size": args.batch_size,
            "train.epochs": 1,
            "model.dtype": args.dtype,
        },
    )
    cb = ProfileSteps(args.first, args.last)
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg.model_copy(update={"output": str(Path(tmp) / "out")}), progress=False, callbacks=[cb])
    if cb.prof is None or not cb.seconds:
        raise SystemExit("the profiled steps did not run: raise --last or check the recipe's row count")
    totals: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for ev in cb.prof.key_averages():
        totals[category(ev.key)] += ev.self_cpu_time_total
        ops[ev.key] += ev.self_cpu_time_total
    total = sum(totals.values())
    result = {
        "command": "python " + " ".join(sys.argv),
        "recipe": args.recipe,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "steps_profiled": args.last - args.first,
        "wall_seconds": cb.seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "share_of_self_cpu_time": {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_ops": {k: v / total for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:15]},
    }
    print(f"{args.recipe}: {result['steps_profiled']} steps of {args.batch_size} rows, {cb.seconds:.1f} s")
    for k, v in result["share_of_self_cpu_time"].items():
        print(f"  {100 * v:5.1f}%  {k}")
    print("top ops:")
    for k, v in result["top_ops"].items():
        print(f"  {100 * v:5.1f}%  {k}")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
