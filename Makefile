# `make demo` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-slow test-all demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU-usable wheels that lie on this disk (see README).
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,viz]'
	touch $(STAMP)

# the quick suite (a few minutes on 2 cores); the slow tests (torchrun, ...) are marked `slow`
test: venv
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# everything: the quick suite, then the slow tests
test-all: test test-slow

demo: venv
	$(BIN)/hpa-embed demo --out demo-output

# every benchmark at quick sizes, one table (bench-output/summary.md); --full: full sizes, hours
bench: venv
	$(BIN)/python benchmarks/run_all.py

lint: venv
	$(BIN)/ruff check hpa_embed tests benchmarks examples

clean:
	rm -rf $(VENV) demo-output bench-output runs
