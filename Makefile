# The two commands the README leads with: `make demo` (set up and run the built-in example)
# and `make test` (the whole suite, with lint and type checks). CI runs `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/attncc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the CPU wheel (see pyproject.toml); install it first so nothing
	# resolves a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/attncc

setup: $(BIN)/attncc

demo: setup
	$(BIN)/attncc demo

lint: setup
	$(BIN)/ruff check attncc tests benchmarks
	$(BIN)/ruff format --check attncc tests benchmarks
	$(BIN)/mypy

# Triton's interpreter (kernels on the CPU) and its CUDA compiler cannot share a process:
# the suite runs the kernels interpreted, then the compile-for-sm_80/sm_90 tests natively.
test: lint
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n auto -q -m "not cuda_compile"
	$(BIN)/python -m pytest -n auto -q -m cuda_compile
