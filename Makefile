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

# The browser tests (tests/test_report_browser.py) open the HTML report in a headless Chromium. tests/browser/setup.sh
# says so and installs Debian's `chromium` with apt-get when it can (root or password-less sudo, network); otherwise it
# prints one line and those tests are skipped (-rs prints the reason). HF_FASTRM_SKIP_BROWSER_SETUP=1 installs nothing.
test: $(VENV)/.installed
	-@tests/browser/setup.sh
	$(PY) -m pytest -q -rs

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
