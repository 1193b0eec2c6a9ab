#!/usr/bin/env bash
# The committed `peftkit compare` benchmarks: packaged real reviews (deduplicated, platform from the text) on the two
# packaged bases, every method + full fine-tuning + the two hand-written baselines, 3 seeds, CPU.
#
#   bash benchmarks/compare/run.sh            # ~75 min on 2 idle CPU cores; resumable: re-run after a stop
#
# Budgets are cut to fit a 2-core CPU: the figures compare the methods at one budget, they are not the best each
# method can reach (the recipes train longer). Run nothing else meanwhile: the speed columns assume an idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/compare/results

# MiniLM-L6 (22.7M params): 2,000 training rows x 2 epochs, 1,000 held-out rows, 5 methods + 2 baselines x 3 seeds.
peftkit compare --recipe reviews/minilm-l6_lora --seeds 3 --max-train-rows 2000 --epochs 2 \
    --segment-column platform --output "$OUT/reviews_minilm-l6"

# SmolLM2-135M: 320 training rows x 1 epoch (20 steps of 16), 200 held-out rows. 5 methods x 3 seeds; the baselines
# (the tutorial row alone takes ~6 min a seed here) and 8-bit LoRA at one seed.
SMOL=(--recipe reviews/smollm2-135m_lora --max-train-rows 320 --set data.max_eval_rows=200
      --segment-column platform --output "$OUT/reviews_smollm2-135m")
peftkit compare "${SMOL[@]}" --seeds 3 --no-baselines
peftkit compare "${SMOL[@]}" --methods lora --seeds 1
peftkit compare "${SMOL[@]}" --methods lora --quant 8bit --seeds 1 --no-baselines
