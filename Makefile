# oodlab: `make bench` runs the default benchmark, `make test` runs the tests, `make peer` compares
# with pytorch-ood side by side (in its own .venv-peer; pytorch-ood is never a dependency of oodlab).
# Both set up what they need first (a .venv with pinned dependencies, the offline data); idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PEER   := .venv-peer
OUT    ?= results

.PHONY: setup data bench test lint peer clean-cache

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

# pytorch-ood 0.4.0 beside oodlab, pinned by benchmarks/peer-requirements.txt (--no-deps: its
# requirements come from constraints.txt, torchvision is replaced by a placeholder at import).
$(PEER)/.installed: pyproject.toml constraints.txt benchmarks/peer-requirements.txt
	$(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install -q --upgrade pip
	$(PEER)/bin/python -m pip install -q -c constraints.txt -e .
	$(PEER)/bin/python -m pip install -q --no-deps -r benchmarks/peer-requirements.txt
	touch $(PEER)/.installed

peer: data $(PEER)/.installed
	$(PEER)/bin/python benchmarks/peer.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean-cache:
	rm -rf $${OODLAB_CACHE:-$$HOME/.cache/oodlab}/models $${OODLAB_CACHE:-$$HOME/.cache/oodlab}/features
