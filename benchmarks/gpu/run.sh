#!/usr/bin/env bash
# The one prepared device check: on a lent GPU machine, one call of the device tool's `run` (benchmarks/gpu/README.md):
#
#     command: bash benchmarks/gpu/run.sh      carry: ["benchmarks/gpu/wheels"]      timeout_s: 540
#
# 1. inputs: the machine, the wheels of benchmarks/gpu/wheels.txt (fetched beforehand by fetch_wheels.sh), the size
#    of what the call carries, the GPU tests collected
# 2. installs the wheels into /tmp/peftkit-site (the device has no package index) and checks the environment
# 3. pytest -m gpu tests/test_gpu.py                                      (-> $OUT/tests.xml, in $OUT/run.log)
# 4. benchmarks/gpu/bench.py in the time left                             (-> $OUT/bench.json, $OUT/bench.md)
# Without CUDA (any development machine) it stops after step 1 and the environment check, says what it would run,
# and exits 0 with "dry run: no CUDA" when every input is ready (1, naming what is not, otherwise). Results land in
# $OUT (default runs/gpu-check) and come back from the device: commit them as benchmarks/gpu/results/README.md says.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=${WHEELS:-benchmarks/gpu/wheels}
SITE=/tmp/peftkit-site
TOTAL_S=${TOTAL_S:-500}   # this script's own budget: the call's timeout_s (540) less a margin for the start
TESTS_S=${TESTS_S:-300}   # at most this for the tests; the benchmark gets what is left
# REHEARSE=1 runs steps 2-4 without CUDA as they run with it (the tests with PEFTKIT_GPU_TESTS_ON_CPU=1, the
# benchmark with --allow-cpu), to check this script's own path; PYTEST_ARGS and BENCH_ARGS (word-split) narrow them:
#   REHEARSE=1 WHEELS=/tmp/w311 PYTEST_ARGS="-k llama-lora" BENCH_ARGS="--layers 2 --steps 2" bash benchmarks/gpu/run.sh
REHEARSE=${REHEARSE:-0}
step() { printf '\n== %s (%d s in)\n' "$1" "$SECONDS"; }

main() {
  step "1. inputs"
  echo "repository: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed files"
  echo "python: $PYTHON ($($PYTHON -c 'import platform; print(platform.python_version())'))"
  CUDA=$($PYTHON -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
  $PYTHON -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  missing=0
  while read -r name; do
    file=$(ls "$WHEELS"/"$(echo "$name" | tr - _)"-*.whl 2>/dev/null | head -1)
    if [ -n "$file" ]; then
      echo "wheel: $name: $(basename "$file") ($(du -k "$file" | cut -f1) KiB)"
    else
      echo "wheel: $name: MISSING (bash benchmarks/gpu/fetch_wheels.sh, on a machine with a package index)"
      missing=$((missing + 1))
    fi
  done < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' benchmarks/gpu/wheels.txt)
  tree_kib=$( (git ls-files -z --cached --others --exclude-standard 2>/dev/null | xargs -0 -r du -ck 2>/dev/null | tail -1 | cut -f1) || echo 0)
  wheels_kib=$(du -sk "$WHEELS" 2>/dev/null | cut -f1 || echo 0)
  echo "carried: repository ${tree_kib:-0} KiB + wheels ${wheels_kib:-0} KiB = $(((${tree_kib:-0} + ${wheels_kib:-0}) / 1024)) MiB of the call's 64 MiB"
  if [ $((${tree_kib:-0} + ${wheels_kib:-0})) -gt $((64 * 1024)) ]; then
    echo "carried: over 64 MiB: the call would be refused; drop a wheel from wheels.txt (transformers first)"
  fi

  step "2. environment"
  if [ "$REHEARSE" = 1 ]; then
    echo "REHEARSE=1: steps 2-4 as with CUDA, on $([ "$CUDA" = 1 ] && echo CUDA || echo the CPU)"
    export PEFTKIT_GPU_TESTS_ON_CPU=$((1 - CUDA))
  fi
  if [ "$CUDA" = 1 ] || [ "$REHEARSE" = 1 ]; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
        || echo "install: pip failed; going on with what the image has"
      export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
  else
    echo "no CUDA: nothing installed; checking this machine's environment instead"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PYTHON benchmarks/gpu/check_env.py --json "$OUT/env.json"
  env_rc=$?
  collected=$($PYTHON -m pytest -q -m gpu tests/test_gpu.py --collect-only -p no:cacheprovider 2>&1 | tail -1)
  echo "tests: $collected"
  [[ "$collected" =~ ^[0-9]+\ tests?\ collected ]] || env_rc=1
  if $PYTHON benchmarks/gpu/bench.py --help >/dev/null; then echo "bench.py: parses its arguments"; else echo "bench.py: FAILED to start"; env_rc=1; fi

  # shellcheck disable=SC2206  # PYTEST_ARGS and BENCH_ARGS are word lists on purpose
  PYTEST=($PYTHON -m pytest -m gpu tests/test_gpu.py -v -rA -p no:cacheprovider --junitxml="$OUT/tests.xml" ${PYTEST_ARGS:-})
  # shellcheck disable=SC2206
  BENCH=($PYTHON benchmarks/gpu/bench.py --out "$OUT/bench.json" ${BENCH_ARGS:-})
  [ "$REHEARSE" = 1 ] && [ "$CUDA" != 1 ] && BENCH+=(--allow-cpu)
  if [ "$CUDA" != 1 ] && [ "$REHEARSE" != 1 ]; then
    step "3-4. not run"
    echo "would run: timeout $TESTS_S ${PYTEST[*]}"
    echo "would run: ${BENCH[*]} --budget-s <the time left less 70>"
    echo "inputs: $missing wheel(s) missing, environment check exit $env_rc, $collected"
    if [ "$missing" != 0 ] || [ "$env_rc" != 0 ]; then
      echo "dry run: no CUDA; NOT ready for a device call: fix what is listed above first"
      return 1
    fi
    echo "dry run: no CUDA"
    return 0
  fi
  if [ "$env_rc" != 0 ]; then
    echo "environment check failed (above): the tests and the benchmark would fail the same way; stopping"
    return 1
  fi

  step "3. GPU tests"
  timeout "$TESTS_S" "${PYTEST[@]}"
  tests_rc=$?
  [ "$tests_rc" = 124 ] && echo "tests: stopped at $TESTS_S s; the log above has every test that finished"

  step "4. benchmark"
  left=$((TOTAL_S - SECONDS))
  if [ "$left" -gt 90 ]; then
    timeout "$((left - 10))" "${BENCH[@]}" --budget-s "$((left - 70))"
    bench_rc=$?
  else
    echo "benchmark: only $left s left; not run"
    bench_rc=1
  fi

  step "done"
  echo "tests exit $tests_rc, benchmark exit $bench_rc; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
  [ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
}

main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
