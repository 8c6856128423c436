# moestat: the two commands that set everything up on a fresh machine.
#   make demo   create .venv, install, run the default convergence-rate study
#               (its rate table and plot go to results/)
#   make test   create .venv, install with test extras, run the whole suite
#   make docs   create .venv, install with docs extras, build the site into
#               docs/_build/html (examples and notebook executed, -W)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0

.PHONY: demo test docs lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The suite builds the site's pages too (tests/test_docs.py): test extras
# include the docs ones.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,torch,dask,docs]"
	touch $@ $(VENV)/.installed-docs $(VENV)/.installed-base

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[torch,docs]"
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	MPLBACKEND=Agg $(BIN)/moestat demo --out results

test: $(VENV)/.installed-test
	MPLBACKEND=Agg $(BIN)/python -m pytest -n 2 --durations=15

docs: $(VENV)/.installed-docs
	MPLBACKEND=Agg $(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check moestat tests examples benchmarks docs
	$(BIN)/ruff format --check moestat tests examples benchmarks docs

bench: $(VENV)/.installed-base
	$(BIN)/python benchmarks/bench_em.py
	$(BIN)/python benchmarks/bench_gates.py
	$(BIN)/python benchmarks/bench_families.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) results build *.egg-info docs/_build docs/api docs/auto_examples \
		docs/notebooks docs/jupyter_execute docs/sg_execution_times.rst
