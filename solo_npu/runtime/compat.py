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
