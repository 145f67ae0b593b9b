"""benchmarks/gpu_suite.sh: it runs once on a lent GPU machine, so a run that cannot work must stop at once with one
line, and what it printed must be in $OUT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the suite would run for minutes")
def test_suite_stops_at_preflight_without_cuda(tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    docs = (ROOT / "docs" / "benchmarks.md").read_bytes()
    env = {**os.environ, "OUT": str(out), "GPU_SUITE_RESULTS": str(results), "GPU_SUITE_DEVICE": "cuda",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert lines[-1].startswith("STOP preflight: torch.cuda.is_available() is False"), proc.stdout
    assert not any(line.startswith(("PASS", "FAIL", "===")) for line in lines), proc.stdout  # no section ran
    assert (out / "gpu_suite.log").read_text() == proc.stdout  # the whole log, in $OUT
    assert (out / "gpu_suite_summary.txt").read_text().strip() == lines[-1]
    assert (ROOT / "docs" / "benchmarks.md").read_bytes() == docs
