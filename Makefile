# curvext developer entry points. Every target creates the virtual environment it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: venv build build-cpu test lint demo bench robust-example gpu-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q "setuptools>=64" wheel
	$(BIN)/pip install -q $(TORCH_PIN)
	# the core dependencies, the extras eval, lightning, test and bench of pyproject.toml, and the build tools
	# (torch pinned again so that lightning does not upgrade it)
	$(BIN)/pip install -q numpy scikit-learn pillow pandas pyarrow matplotlib tqdm tensorboard lightning \
	    pytest pytest-benchmark scipy foolbox torchattacks ruff linear-operator ninja pybind11 $(TORCH_PIN)

venv: $(BIN)/python

CSRC := $(shell find csrc -type f) setup.py pyproject.toml
STAMP := $(VENV)/.curvext-build

# Full build (CUDA kernels too when nvcc and a CUDA torch are present); redone when csrc changes.
$(STAMP): $(CSRC) | $(BIN)/python
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(STAMP)

# Quick CPU-only build for iteration (the next `make build` rebuilds with CUDA).
build-cpu: venv
	CURVEXT_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps -e .
	rm -f $(STAMP)

test: build
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check .

demo: build
	$(BIN)/curvext demo

bench: build
	$(BIN)/python -m pytest -q benchmarks --benchmark-only

# Robust training with the curvature penalty on digits; ARGS="--dataset mnist --data-dir DIR" for MNIST.
robust-example: build
	$(BIN)/python examples/robust_training.py $(ARGS)

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info curvext/_C*.so .pytest_cache .benchmarks
