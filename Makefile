# The two set-up commands: `make repro` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1

.PHONY: repro test test-avx2 test-realdata test-walkthrough lint install clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned requirements into $(VENV) (log: $(VENV)/pip.log)"
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt > $(VENV)/pip.log 2>&1 || (tail -n 30 $(VENV)/pip.log; exit 1)
	$(BIN)/pip install --disable-pip-version-check --no-deps --no-build-isolation -e . >> $(VENV)/pip.log 2>&1 || (tail -n 30 $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import realmix, torch, torchvision, dvc, dvclive"
	touch $(STAMP)

install: $(STAMP)

## Run the default pipeline (offline digits dataset) and print the results.
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/realmix runs runs
	@echo
	@echo "Results (metrics/summary.md; chart: metrics/summary.png; per run: runs/<algorithm>/<split>/eval/):"
	$(BIN)/realmix results

## Run the test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

## Run the test suite as an AVX2-only CPU would (oneDNN and ATen capped at AVX2 before torch loads: fp32, AVX2 kernels).
test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

## Run the real-data tests (Fashion-MNIST from the Debian package dataset-fashion-mnist).
test-realdata: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m realdata

## Follow the README's own-images walkthrough exactly as written (presets/folder.yaml at full size: 19 min measured on 2 cores).
test-walkthrough: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m slow tests/test_own_images.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
