"""Shared by the benchmark scripts: the machine line and the docs/benchmarks.md section writer."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from solo_npu.runtime import describe_machine as _describe_machine  # noqa: E402
from solo_npu.runtime import import_torch_npu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"

__all__ = ["BENCHMARKS_MD", "ROOT", "describe_machine", "publish", "write_section"]


def describe_machine() -> str:
    """The machine line of a report (solo_npu.runtime.describe_machine), with the NPUs of the machine whatever device
    the benchmark measured: torch_npu is imported first when it is installed (a broken one is one WARNING)."""
    import_torch_npu()
    return _describe_machine()


def write_section(heading: str, section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section that starts with ``heading`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def publish(heading: str, lines: list[str], write: bool = True) -> str:
    """Join a section's ``lines``, print it and (when ``write``) put it into docs/benchmarks.md."""
    section = "\n".join(lines) + "\n"
    print(section)
    if write:
        write_section(heading, section)
    return section
