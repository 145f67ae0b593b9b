"""Every benchmark script turns torch's device-backend autoloading off before anything can import torch.

torch >= 2.5 imports every installed "torch.backends" entry point at ``import torch`` unless the environment says
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (pytorch torch/__init__.py: ``_is_device_backend_autoload_enabled`` reads it,
``_import_device_backends`` turns a failing entry point into a RuntimeError), so a torch_npu whose CANN libraries
do not load would end a CPU benchmark at its first import. train.py and deploy.py set it the same way.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _sets_autoload_off(node: ast.stmt) -> bool:
    """``os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")`` (a value the user set wins)."""
    call = node.value if isinstance(node, ast.Expr) else None
    return (isinstance(call, ast.Call) and ast.unparse(call.func) == "os.environ.setdefault"
            and [ast.literal_eval(a) if isinstance(a, ast.Constant) else None for a in call.args]
            == ["TORCH_DEVICE_BACKEND_AUTOLOAD", "0"])


def _may_import_torch(node: ast.stmt) -> bool:
    """An import of anything but the standard library: torch itself, solo_npu, the benchmarks' own modules
    (``common`` imports solo_npu.runtime) or a package that may import torch."""
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] not in STDLIB for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] not in STDLIB
    return False


def test_there_are_benchmark_scripts() -> None:
    assert len(BENCHMARKS) >= 5, BENCHMARKS


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_turns_backend_autoload_off_before_torch(script: Path) -> None:
    body = ast.parse(script.read_text(), str(script)).body  # module level: runs at import, in order
    first_import = next((n for n in body if _may_import_torch(n)), None)
    setting = next((n for n in body if _sets_autoload_off(n)), None)
    assert setting is not None, f"{script.name}: no module-level os.environ.setdefault(\"TORCH_DEVICE_BACKEND_" \
                                "AUTOLOAD\", \"0\")"
    if first_import is not None:
        assert setting.lineno < first_import.lineno, (
            f"{script.name}: line {first_import.lineno} ({ast.unparse(first_import)}) comes before the setting "
            f"(line {setting.lineno})")
    nested = [n.lineno for n in ast.walk(ast.Module(body=[n for n in body if n.lineno < setting.lineno],
                                                    type_ignores=[]))
              if isinstance(n, ast.Import | ast.ImportFrom) and _may_import_torch(n)]
    assert not nested, f"{script.name}: imports at lines {nested} come before the setting"
