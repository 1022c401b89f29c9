"""Shared set-up of the browser tests: the Chrome DevTools client of tests/browser/cdp.py, loaded by path (tests/browser
is not a package: its scripts also run on their own), and the marks that skip a test module when Chromium is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load_cdp() -> ModuleType:
    path = Path(__file__).parent / "browser" / "cdp.py"
    spec = importlib.util.spec_from_file_location("hf_fastrm_tests_cdp", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cdp = _load_cdp()

# `pytestmark = [*BROWSER_MARKS, ...]` in a browser test module: marked `browser`, skipped without Chromium.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        cdp.find_chromium() is None,
        reason="Chromium is not installed: run tests/browser/setup.sh (apt-get install chromium) or set "
        "HF_FASTRM_CHROMIUM",
    ),
]
