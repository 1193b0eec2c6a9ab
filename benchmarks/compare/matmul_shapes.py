"""The ceiling the FLOP/s goal meets on CPU: how fast the matmuls of one training step run at the model's own shapes,
as a share of the square-matmul peak that `peftkit compare` divides by, measured in the same process.

    python benchmarks/compare/matmul_shapes.py --out benchmarks/compare/results/matmul_shapes.json

For every linear layer of one transformer block, the forward product (tokens × in)·(in × out) and the backward product
to the activations (tokens × out)·(out × in) are timed at the token count of one training batch in the committed
compare runs (batch size × real tokens per row). A frozen base computes exactly these two products per layer, the
4·N in the FLOP formula; attention scores, softmax, norms, activations and the adapter itself come on top and are left
out, so the share printed is an upper bound on what `FLOP/s of peak: real` can reach for that model on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from peftkit.compare.measure import matmul_peak

# One block's linear layers as (name, in_features, out_features), and the tokens of one training batch as the
# committed compare runs saw them (batch size × real tokens per row: real tok/s ÷ samples/s in their report.json).
MODELS = {
    "smollm2-135m": {
        "layers": [
            ("q_proj", 576, 576),
            ("k_proj", 576, 192),
            ("v_proj", 576, 192),
            ("o_proj", 576, 576),
            ("gate_proj", 576, 1536),
            ("up_proj", 576, 1536),
            ("down_proj", 1536, 576),
        ],
        "tokens": 16 * 52,
    },
    "minilm-l6": {
        "layers": [
            ("query", 384, 384),
            ("key", 384, 384),
            ("value", 384, 384),
            ("attention.output", 384, 384),
            ("intermediate", 384, 1536),
            ("output", 1536, 384),
        ],
        "tokens": 32 * 44,
    },
}


def best_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Best of `repeats` timings after a warm-up: the same rule as the peak, so the ratio compares like with like."""
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak("cpu", torch.float32)
    result = {
        "command": "python " + " ".join(sys.argv),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_flops": peak["flops"],
        "models": {},
    }
    for model, spec in MODELS.items():
        m = spec["tokens"]
        rows, flops, seconds = [], 0.0, 0.0
        for name, k, n in spec["layers"]:
            x, w = torch.randn(m, k), torch.randn(k, n)
            dy, wt = torch.randn(m, n), torch.randn(n, k)
            fwd, bwd = best_seconds(x, w, args.repeats), best_seconds(dy, wt, args.repeats)
            f = 2 * m * k * n
            rows.append(
                {
                    "layer": name,
                    "shape": [m, k, n],
                    "forward_share_of_peak": f / fwd / peak["flops"],
                    "backward_share_of_peak": f / bwd / peak["flops"],
                }
            )
            flops += 2 * f
            seconds += fwd + bwd
        result["models"][model] = {
            "tokens_per_batch": m,
            "layers": rows,
            "block_share_of_peak": flops / seconds / peak["flops"],
        }
        print(
            f"{model}: {m} tokens a batch, one block's linear layers forward + backward at "
            f"{100 * flops / seconds / peak['flops']:.0f}% of the {peak['flops'] / 1e9:.0f} GFLOP/s square-matmul peak"
        )
        for r in rows:
            print(
                f"  {r['layer']:<18} {r['shape']}  forward {100 * r['forward_share_of_peak']:.0f}%  "
                f"backward {100 * r['backward_share_of_peak']:.0f}%"
            )
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
