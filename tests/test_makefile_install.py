"""`make install` with another TORCH_SPEC or EXTRAS on an existing venv installs again (README's NPU, CUDA and
CPU-only commands); the same ones, or a plain `make test` afterwards, keep what is installed. Dry runs (`make -n`)
against a venv whose stamp names what it holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(venv: Path, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("TORCH_SPEC", "EXTRAS", "MAKEFLAGS", "MFLAGS")}
    proc = subprocess.run(["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def installs(output: str) -> bool:
    return "pip install" in output


def test_another_torch_spec_or_extras_installs_again(venv: Path) -> None:
    stamp = venv / ".installed"
    stamp.write_text('torch==2.1.0 "numpy<2" [dev]\n')  # newer than the Makefile and pyproject.toml
    same = 'TORCH_SPEC=torch==2.1.0 "numpy<2"'
    assert not installs(dry_run(venv, "install", same))
    assert not installs(dry_run(venv, "install", same, "EXTRAS=dev"))
    assert not installs(dry_run(venv, "test", "TESTS=tests/none"))  # a plain make keeps the venv's torch
    other = dry_run(venv, "install", same, "EXTRAS=dev,npu")
    assert installs(other) and '-e ".[dev,npu]"' in other
    assert installs(dry_run(venv, "install", "TORCH_SPEC=torch==2.13.0"))
    assert installs(dry_run(venv, "install", env={"TORCH_SPEC": "torch==2.7.1"}))
    assert "'torch==2.7.1 [dev]' >" in dry_run(venv, "install", env={"TORCH_SPEC": "torch==2.7.1"})
