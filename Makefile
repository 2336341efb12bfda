# The two commands (README.md):
#   make test    set up .venv, build fastops._C, run the tests and ruff
#   make bench   set up .venv, build fastops._C, run the benchmarks (bench/results/)
# Both create the virtual environment and install the pinned set when missing;
# re-running them reinstalls nothing and rebuilds only changed sources.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# CUDA kernels are compiled wherever a CUDA toolkit is found, GPU or not (CI
# has nvcc and no GPU), for an explicit list of architectures: A100 and H100.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
FORCE_CUDA ?= $(if $(CUDA_HOME),1,0)
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
MAX_JOBS ?= $(shell nproc)
export CUDA_HOME FORCE_CUDA TORCH_CUDA_ARCH_LIST MAX_JOBS

EXTENSION := fastops/_C.so
EXTENSION_SOURCES := $(shell find csrc -type f -name '*.cpp' -o -type f -name '*.cu' -o -type f -name '*.h' -o -type f -name '*.cuh') setup.py

.PHONY: all setup build test lint bench clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# The pinned development set; the torch wheel is the CUDA 13.0 build.
$(VENV)/.deps-installed: requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# fastops itself, editable, without compiling (the extension is built in place below).
$(VENV)/.fastops-installed: $(VENV)/.deps-installed pyproject.toml setup.py
	FASTOPS_NO_EXTENSION=1 $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.fastops-installed

# Incremental: ninja recompiles only what changed under build/.
$(EXTENSION): $(EXTENSION_SOURCES) $(VENV)/.fastops-installed
	$(PY) setup.py build_ext --inplace
	touch $@

build: $(EXTENSION)

test: build
	FASTOPS_EXPECT_CUDA_KERNELS=$(FORCE_CUDA) $(PY) -m pytest
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: build
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build $(EXTENSION) .pytest_cache .ruff_cache
