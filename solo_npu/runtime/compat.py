"""Differences between the torch releases the project supports, found by feature, not by version number.

The floor is the oldest torch that torch_npu still maintains (see the install section of the README);
the rest of the code asks these helpers instead of testing ``torch.__version__``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import torch


@functools.cache
def torchscript_onnx_export_kwargs() -> dict[str, Any]:
    """Keyword arguments that make ``torch.onnx.export`` use the TorchScript-based exporter.

    torch 2.5 added ``dynamo=`` (default False) and torch 2.9 turned it on by default, so it is passed
    as False wherever it exists; older releases only have the TorchScript exporter and reject the
    keyword.
    """
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def has_device_generic_grad_scaler() -> bool:
    """True when ``torch.amp.GradScaler(device)`` exists (torch >= 2.3), which also scales on the CPU."""
    return hasattr(torch.amp, "GradScaler")


@functools.cache
def dataloader_pins_for_accelerator() -> bool:
    """Whether ``DataLoader(pin_memory=True)`` pins for the current accelerator (``torch.accelerator``) rather than
    for CUDA only.

    torch 2.1's ``_BaseDataLoaderIter`` pins ``loader.pin_memory and torch.cuda.is_available()`` unless
    ``pin_memory_device`` names another device (torch/utils/data/dataloader.py of torch 2.1.0), so on the NPU it
    pins nothing by default; later releases ask ``torch.accelerator`` (torch 2.13's dataloader.py, which also
    ignores ``pin_memory_device`` with a deprecation warning). Found in the iterator's own source.
    """
    from torch.utils.data import dataloader

    try:
        return "torch.accelerator" in inspect.getsource(dataloader._BaseDataLoaderIter.__init__)
    except (OSError, TypeError, AttributeError):  # no source: pass the device, which every release takes
        return False


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", ...): ``torch.is_autocast_enabled(device)``
    from torch 2.4 on; before, the plain call answers for CUDA and the CPU has its own function
    (``is_autocast_cpu_enabled``) and a PrivateUse1 backend (the NPU) its module's, so another device is a
    ValueError there rather than CUDA's answer."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        if device_type == "cuda":
            return torch.is_autocast_enabled()
        # torch 2.1-2.3's torch.autocast keeps a PrivateUse1 backend's state in its module
        # (autocast_mode.py: ``custom_device_mod.is_autocast_enabled()``), e.g. torch.npu of torch_npu
        module = getattr(torch, device_type, None)
        if device_type == torch._C._get_privateuse1_backend_name() and hasattr(module, "is_autocast_enabled"):
            return bool(module.is_autocast_enabled())
        raise ValueError(f"autocast_enabled({device_type!r}) needs torch >= 2.4 (torch {torch.__version__} "
                         "answers for cpu and cuda only)") from None


@functools.cache
def has_int8_matmul(device_type: str) -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32 matrix product) runs on ``device_type`` for any shape.

    The CPU kernel arrived after torch 2.1; the CUDA one needs sizes in multiples of 8 and the NPU has none,
    so only the CPU is asked for (other devices answer False). Checked once by running it on a tiny input.
    """
    if device_type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    a = torch.ones(3, 5, dtype=torch.int8)
    try:
        return bool(torch.equal(torch._int_mm(a, a.t()), torch.full((3, 3), 5, dtype=torch.int32)))
    except (RuntimeError, NotImplementedError):
        return False


@functools.cache
def has_onednn_matmul() -> bool:
    """Whether oneDNN's float32 matrix product (``torch.ops.mkldnn._linear_pointwise``, the op inductor
    lowers CPU linear layers to; torch 2.0 and newer builds with oneDNN) runs here. Checked once by
    comparing it with ``@`` on a tiny input."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        a, b = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(4, 3)
        return bool(torch.equal(op(a, b, None, "none", [], ""), a @ b.t()))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _find_is_compiling() -> Any:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling
    return importlib.import_module("torch._dynamo").is_compiling  # torch < 2.3


_IS_COMPILING = _find_is_compiling()


def is_compiling() -> bool:
    """Whether torch.compile is tracing the calling code: ``torch.compiler.is_compiling`` from torch 2.3 on,
    ``torch._dynamo.is_compiling`` before."""
    return bool(_IS_COMPILING())
