"""Feature-map sums that skip a new tensor when nothing will differentiate them."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inference_add"]


def inference_add(x: Tensor, y: Tensor) -> Tensor:
    """``x + y``; without autograd it is written into ``x`` (no new activation-sized tensor in inference).
    With autograd the sum is a new tensor: the op that made ``x`` may have saved it for its backward (a
    ReLU does)."""
    return x + y if torch.is_grad_enabled() else x.add_(y)
