# `make demo` and `make test` set everything up on a fresh machine (a venv in .venv) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build; torch==2.13.0 is a CPU build here.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/python examples/demo.py --out demo_out

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: setup
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .hypothesis
