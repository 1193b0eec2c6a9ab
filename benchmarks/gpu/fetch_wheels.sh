#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels a device machine lacks, into benchmarks/gpu/wheels/
# (ignored by git; the device call carries it). Run from the repository root:
#
#     bash benchmarks/gpu/fetch_wheels.sh            # for the device's Python, 3.12 (PY=3.11 ... to change it)
#
# Versions are the lock's (lock/requirements.txt), so the device runs what CI tests; wheels.txt names what the device
# image lacks (what it has is listed there). Everything travels in one call's 64 MiB with the repository (about
# 2.5 MB), so the list stays short. --no-deps: wheels.txt is the closure the device lacks; a new need shows up in
# run.sh's environment check (benchmarks/gpu/check_env.py) as an import that fails, with the missing name.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-3.12}
DEST=${DEST:-benchmarks/gpu/wheels}
LOCK=lock/requirements.txt
PIP=${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip")}

# The list, one name a line with why: benchmarks/gpu/wheels.txt (run.sh reads it too).
mapfile -t NEEDS < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' benchmarks/gpu/wheels.txt)

mkdir -p "$DEST"
for name in "${NEEDS[@]}"; do
  version=$(grep -i "^${name}==" "$LOCK" | head -1 | sed 's/.*==\([^ ]*\).*/\1/')
  [ -n "$version" ] || { echo "fetch_wheels: $name is not in $LOCK" >&2; exit 1; }
  $PIP download -q --no-deps --only-binary=:all: --dest "$DEST" \
    --python-version "$PY" --implementation cp --abi "cp${PY/./}" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${name}==${version}"
done
# No model or tokenizer travels: tests/gpu_models.py builds both from a config and a word list on the device.
du -ch "$DEST"/*.whl | sed 's/^/fetch_wheels: /'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
  echo "fetch_wheels: $total bytes: with the repository that is over a device call's 64 MiB; drop a wheel" >&2
  exit 1
fi
