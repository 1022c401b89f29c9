"""The benchmark scripts run (their figures are measured by hand; these only keep the scripts working with the code
they measure), on the smallest shapes they accept."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--num-beams", "2"], ["--batch-size", "2"]], ids=["beams", "batch"])
def test_overhead_benchmark_runs_and_reports_ratios(tmp_path, mode):
    overhead = _load("overhead")
    out = tmp_path / "figures.json"
    figures = overhead.main(["--num-layers", "1", "--new-tokens", "2", "--repeats", "1", "--json", str(out), *mode])
    assert out.exists()
    assert figures["runs_with_identical_tokens"] == 1
    for name in ("time_ratio", "memory_ratio"):
        assert figures[name] > 0
    assert figures["isolated_fastrm_work_s"] > 0
