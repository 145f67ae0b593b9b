"""Shared by the benchmark scripts: the machine line and the docs/benchmarks.md section writer."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from solo_npu.runtime import describe_machine as _describe_machine  # noqa: E402
from solo_npu.runtime import import_torch_npu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Where the sections go: docs/benchmarks.md, or the file SOLO_BENCHMARKS_MD names (benchmarks/gpu_suite.sh points it
# at a copy under outputs/, so that a suite run, its CPU dry run above all, leaves the tracked tables alone).
BENCHMARKS_MD = Path(os.environ.get("SOLO_BENCHMARKS_MD") or ROOT / "docs" / "benchmarks.md")

__all__ = ["BENCHMARKS_MD", "ROOT", "command_line", "cuda_settings", "describe_machine", "device_name", "fp32_label",
           "publish", "write_section"]


def describe_machine() -> str:
    """The machine line of a report (solo_npu.runtime.describe_machine), with the NPUs of the machine whatever device
    the benchmark measured: torch_npu is imported first when it is installed (a broken one is one WARNING)."""
    import_torch_npu()
    return _describe_machine()


def device_name(info) -> str:
    """The measured device of a table row: the GPU's or NPU's own name (``NVIDIA H200``), else ``cpu``."""
    import torch

    if info.type == "cuda":
        return torch.cuda.get_device_name(info.device)
    if info.type == "npu":
        return torch.npu.get_device_name(info.index)
    return "cpu"


def _tf32() -> tuple[bool, bool]:
    """Whether fp32 convolutions (cuDNN) and matrix products (cuBLAS) may run as TF32 on tensor cores: PyTorch's
    ``torch.backends.cudnn.allow_tf32`` (default True) and ``torch.backends.cuda.matmul.allow_tf32`` (default
    False since torch 1.12; pytorch docs/source/backends.rst and notes/cuda.rst, "TensorFloat-32 (TF32)")."""
    import torch

    return bool(torch.backends.cudnn.allow_tf32), bool(torch.backends.cuda.matmul.allow_tf32)


def fp32_label(info) -> str:
    """``fp32`` as the device runs it: on CUDA, where TF32 is allowed, ``fp32 (TF32 convolutions)`` and the like
    (TF32 keeps 10 mantissa bits in the products: it is not full fp32)."""
    if info.type != "cuda":
        return "fp32"
    conv, matmul = _tf32()
    where = [name for name, on in (("convolutions", conv), ("matrix products", matmul)) if on]
    return f"fp32 (TF32 {' and '.join(where)})" if where else "fp32 (no TF32)"


def cuda_settings(info) -> str:
    """The CUDA settings that move the timings, for the measured line of a CUDA table ("" on other devices)."""
    if info.type != "cuda":
        return ""
    import torch

    conv, matmul = _tf32()
    return (f"torch.backends.cudnn.benchmark={torch.backends.cudnn.benchmark}, "
            f"torch.backends.cudnn.allow_tf32={conv}, torch.backends.cuda.matmul.allow_tf32={matmul}")


def command_line(script: str, argv: list[str]) -> str:
    """The command that ran: ``python benchmarks/<script>`` with the arguments it was given, after
    OMP_NUM_THREADS when the environment set it."""
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return f"{env}python benchmarks/{script}" + (f" {shlex.join(argv)}" if argv else "")


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
