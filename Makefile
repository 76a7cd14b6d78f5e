# Two commands do all the set-up: `make demo` and `make test`. Both bootstrap .venv and the pinned Kine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install kine lab bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

kine: $(STAMP)
	$(BIN)/kinelab install

demo: kine
	$(BIN)/kinelab demo

test: kine
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lab: kine
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks

bench: kine
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/observe.py
	$(BIN)/python benchmarks/apiserver.py
	$(BIN)/python benchmarks/etcd_baseline.py
	$(BIN)/python benchmarks/faults.py
	$(BIN)/python benchmarks/kind.py

clean:
	rm -rf $(VENV) kinelab-demo.duckdb
