# Set-up is two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unitok-installed
CKPT ?= ../shared/parity/vtp_small_default
OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo demo-checkpoint test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev,plot,eval]"
	touch $(STAMP)

install: $(STAMP)

# Pre-train the tiny VTP and an AE-only twin on the embedded shapes (CPU), then evaluate and compare both.
demo: install
	$(VENV)/bin/unitok-demo-pretrain --out $(OUT)

# Encode and decode sample images with a VTP checkpoint (the tiny parity checkpoint unless CKPT=...).
demo-checkpoint: install
	$(VENV)/bin/unitok-demo --ckpt $(CKPT) --out outputs/demo_checkpoint

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/vtp_throughput.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
