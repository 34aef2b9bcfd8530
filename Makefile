# Everything installs into ./.venv. torch goes in first so pip never pulls the multi-GB CUDA build by accident:
# override TORCH (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu128") for a GPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup  ## export the default purifier (with parity checks), purify the bundled photos, train the BSN briefly
	$(BIN)/ncis-deploy export --out demo/export
	$(BIN)/ncis-deploy purify --out demo/purified
	$(BIN)/ncis-deploy train --steps 20 --crop 32 --batch 4 --out demo/bsn

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo
