# curvext developer entry points. Every target creates the virtual environment it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: venv build build-cpu test test-fast demo bench gpu-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q numpy scipy pandas pyarrow matplotlib tqdm scikit-learn ninja pybind11 \
	    pytest pytest-benchmark foolbox torchattacks linear-operator

venv: $(BIN)/python

# Full build (CUDA kernels too when nvcc and a CUDA torch are present).
build: venv
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .

# Quick CPU-only build for iteration.
build-cpu: venv
	CURVEXT_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps -e .

test: build
	$(BIN)/python -m pytest -q

demo: build
	$(BIN)/curvext demo

bench: build
	$(BIN)/python -m pytest -q benchmarks --benchmark-only

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info curvext/_C*.so .pytest_cache .benchmarks
