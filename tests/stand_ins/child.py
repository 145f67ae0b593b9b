"""Tests that need PyTorch's PrivateUse1 backend named "npu" run in a child pytest process.

torch_npu, and the stand-in's :func:`stand_ins.torch_npu.install`, rename the PrivateUse1 backend with
``torch.utils.rename_privateuse1_backend``, which a process cannot undo: after it, code that asks torch for
the module of the current accelerator (ONNX export does) looks for ``torch.npu`` and fails. So no test
renames it in the pytest process: a test decorated with :func:`in_child` runs in one child pytest process
per test module (the module's decorated tests that this session selected, in one call), where the backend
is named "npu" before each of them. In the pytest process the test reports the child's outcome: passed,
skipped with the child's reason, or failed with the child's report.
"""

from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

CHILD_ENV = "SOLO_NPU_TEST_NPU_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"
CHILD_TIMEOUT_S = 300
# Per test module: test name (with its parameters) -> (outcome, text) from the child's JUnit report.
_OUTCOMES: dict[Path, dict[str, tuple[str, str]]] = {}


def name_privateuse1_npu() -> None:
    """Name the PrivateUse1 backend "npu" as torch_npu does (for the life of the process)."""
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")


def in_child(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``test`` in the module's child pytest process. Put it above ``pytest.mark.parametrize``."""
    if IN_CHILD:
        @functools.wraps(test)
        def renamed_first(*args: Any, **kwargs: Any) -> Any:
            name_privateuse1_npu()
            return test(*args, **kwargs)

        return renamed_first

    params = [name for mark in getattr(test, "pytestmark", []) if mark.name == "parametrize"
              for name in _argnames(mark.args[0])]

    @functools.wraps(test)
    def report_child_outcome(request: pytest.FixtureRequest, **_params: Any) -> None:
        outcome, text = _child_outcomes(request).get(request.node.name, ("missing", ""))
        if outcome == "skipped":
            pytest.skip(f"in the child process: {text}")
        if outcome != "passed":
            pytest.fail(f"in the child process ({outcome}):\n{text}", pytrace=False)

    # Only the parameters and ``request``: the test's fixtures are set up in the child, not here.
    report_child_outcome.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in params])
    report_child_outcome.runs_in_child = True
    return report_child_outcome


def _argnames(argnames: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(argnames, str):
        return [n.strip() for n in argnames.split(",") if n.strip()]
    return list(argnames)


def _child_outcomes(request: pytest.FixtureRequest) -> dict[str, tuple[str, str]]:
    """Run this module's selected child tests once, in one child pytest process; their outcomes by name."""
    path = request.node.path
    if path in _OUTCOMES:
        return _OUTCOMES[path]
    nodeids = [item.nodeid for item in request.session.items
               if item.path == path and getattr(getattr(item, "function", None), "runs_in_child", False)]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *nodeids]
        proc = subprocess.run(cmd, cwd=request.config.rootpath, env={**os.environ, CHILD_ENV: "1"},
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        outcomes = _read_junit(report) if report.exists() else {}
    output = f"{' '.join(cmd)}\nexit status {proc.returncode}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    for nodeid in nodeids:  # a test the report lacks (the child did not collect it, or crashed): its output
        outcomes.setdefault(nodeid.rsplit("::", 1)[-1], ("missing from the child's report", output))
    _OUTCOMES[path] = outcomes
    return outcomes


def _read_junit(report: Path) -> dict[str, tuple[str, str]]:
    """Outcome and text per test case: failure or error with pytest's report, skipped with its reason."""
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcomes[case.get("name")] = ("passed", "")
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                text = element.get("message", "") if kind == "skipped" else element.text or element.get("message", "")
                outcomes[case.get("name")] = (kind, text)
                break
    return outcomes
