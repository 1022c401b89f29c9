# Two commands for a fresh clone: `make explain` (the main job on the shipped model) and `make test`.
# Both create .venv on first use: the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build),
# then this package with its dev extras.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: explain test lint install

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

explain: $(VENV)/.installed
	$(VENV)/bin/hf-fastrm explain

# The browser tests need Debian's Chromium: tests/browser/setup.sh installs it when it can (root), else they skip.
test: $(VENV)/.installed
	-@tests/browser/setup.sh
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
