# EntroDrop companion. Two commands matter: `make reproduce` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first and separately: CPU machines take this (local or PyPI) build; GPU users
# install their CUDA build into the venv beforehand (see README) and it is kept.
TORCH_SPEC ?= torch==2.13.0
COMPANION_DATA_DIR ?= $(abspath ../shared/data)
export COMPANION_DATA_DIR
PROFILE ?= default
MODEL ?=
DEVICE ?=
RESULTS ?= results/$(PROFILE)

.PHONY: install reproduce test test-fast clean help

help:
	@echo "make reproduce   regenerate results (PROFILE=smoke|default|paper, MODEL=..., DEVICE=...)"
	@echo "make test        run the test suite"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(PY) -m companion score --data wikitext2 --samples 32 --seqlen 256 --out $(RESULTS)/scores.json \
		$(if $(MODEL),--model $(MODEL)) $(if $(DEVICE),--device $(DEVICE))
	$(PY) -m companion order $(RESULTS)/scores.json --method knn --granularity attn --format json > $(RESULTS)/order_knn_attn.json
	$(PY) -m companion order $(RESULTS)/scores.json --method cosine --granularity attn --format json > $(RESULTS)/order_cosine_attn.json

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) book/_build generated
