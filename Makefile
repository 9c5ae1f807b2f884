# oodlab: `make bench` runs the default benchmark, `make test` runs the tests.
# Both set up what they need first (a .venv with pinned dependencies, the offline data); idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= results

.PHONY: setup data bench test lint clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

data: $(STAMP)
	PYTHON=$(PY) bash scripts/fetch_data.sh
	$(VENV)/bin/oodlab data

bench: data
	$(VENV)/bin/oodlab bench --out $(OUT)

test: data
	bash scripts/install_chromium.sh
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean-cache:
	rm -rf $${OODLAB_CACHE:-$$HOME/.cache/oodlab}/models $${OODLAB_CACHE:-$$HOME/.cache/oodlab}/features
