"""Differences between the torch releases the project supports, found by feature, not by version number.

The floor is the oldest torch that torch_npu still maintains (see the install section of the README);
the rest of the code asks these helpers instead of testing ``torch.__version__``.
"""

from __future__ import annotations

import functools
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


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ("cpu", "cuda", ...): ``torch.is_autocast_enabled(device)``
    from torch 2.4 on; before, only the CPU's has its own function (``is_autocast_cpu_enabled``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument; the plain call answers for CUDA
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
