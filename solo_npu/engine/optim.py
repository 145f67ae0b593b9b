"""Optimiser and learning-rate schedule."""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from solo_npu.runtime import DeviceInfo, sgd_class

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")  # optim.name (any case): build_optimizer
LR_POLICIES = ("step", "cosine")  # optim.policy: WarmupStepSchedule


def scaled_lr(base_lr: float, total_batch_size: int, base_batch_size: int = 16, auto_scale: bool = True) -> float:
    """Linear scaling rule: ``base_lr`` is for ``base_batch_size`` images per step (0.01 per 16)."""
    if not auto_scale:
        return float(base_lr)
    return float(base_lr) * total_batch_size / base_batch_size


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in one group (weight decay on all of them, as the mmdet reference does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return [{"params": params, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, optim_cfg: Mapping[str, Any], info: DeviceInfo,
                    lr: float) -> torch.optim.Optimizer:
    """SGD (or NPU fused SGD when ``optim.fused``), or AdamW, over the trainable parameters.

    SGD with momentum is the reference recipe. AdamW (``optim.name=adamw``, ``optim.betas``) is for
    training from scratch on small data, where it converges in far fewer iterations.
    """
    name = str(optim_cfg.get("name", "sgd")).lower()
    groups = param_groups(model, float(optim_cfg.get("weight_decay", 1e-4)))
    if name == "adamw":
        if optim_cfg.get("fused"):
            logger.warning("optim.fused=true is for SGD (torch_npu's NpuFusedSGD): optim.name=adamw runs torch's "
                           "AdamW")
        betas = tuple(float(b) for b in optim_cfg.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name != "sgd":
        raise ValueError(f"optim.name={name!r} is not supported (use {' or '.join(OPTIMIZERS)})")
    cls = sgd_class(info, bool(optim_cfg.get("fused", False)))
    return cls(groups, lr=lr, momentum=float(optim_cfg.get("momentum", 0.9)),
               nesterov=bool(optim_cfg.get("nesterov", False)))


def schedule_notice(policy: str, lr_steps: list[int], epochs: int, gamma: float) -> str | None:
    """The WARNING for a step schedule whose last step comes long before the end (``train.epochs`` raised without
    ``optim.lr_steps``: 24 epochs on the 1x steps [9, 11] spend 13 at gamma^2 x the LR), or ``None``. The
    recipes end 1 (1x), 2 (fine-tuning) or 3 (3x) epochs after their last step."""
    steps = sorted(int(s) for s in lr_steps)
    if policy != "step" or not steps or steps[-1] >= epochs:
        return None
    tail = epochs - steps[-1]
    if tail <= 3 or tail * 4 <= epochs:
        return None
    return (f"train.epochs={epochs} with optim.lr_steps={steps}: the last {tail} epochs ({steps[-1]}-{epochs - 1}, "
            f"0-based) run at {gamma ** len(steps):.3g}x the LR; a longer run moves the steps too (optim=3x: 36 "
            "epochs with steps [27, 33], or optim.lr_steps=[...])")


class WarmupStepSchedule:
    """Linear warm-up over iterations, then a step decay at epoch milestones (or a cosine decay).

    ``lr_steps`` are 0-based epoch indices: with ``[9, 11]`` epochs 0-8 run at the base LR, 9-10 at
    ``gamma`` times it and 11 onwards at ``gamma**2`` (the SOLO reference 1x schedule). With
    ``policy="cosine"`` the LR instead follows half a cosine from the base LR at iteration 0 to
    ``min_lr_ratio`` times it at ``total_iters``. The warm-up factor goes linearly from
    ``warmup_ratio`` at iteration 0 to 1 at ``warmup_iters``, as mmdet does. The LR is a pure function
    of (iteration, epoch), so resuming needs no more state than those two.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, lr_steps: Sequence[int] = (9, 11),
                 gamma: float = 0.1, warmup_iters: int = 500, warmup_ratio: float = 0.01, policy: str = "step",
                 total_iters: int = 0, min_lr_ratio: float = 0.0) -> None:
        if policy not in LR_POLICIES:
            raise ValueError(f"optim.policy={policy!r} is not supported (use {' or '.join(LR_POLICIES)})")
        if policy == "cosine" and total_iters <= 0:
            raise ValueError("the cosine policy needs the total number of iterations")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.lr_steps = sorted(int(s) for s in lr_steps)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.policy = policy
        self.total_iters = int(total_iters)
        self.min_lr_ratio = float(min_lr_ratio)
        self.last_lr = self.base_lr

    def lr_at(self, iteration: int, epoch: int) -> float:
        if self.policy == "cosine":
            t = min(iteration, self.total_iters) / self.total_iters
            lr = self.base_lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        else:
            lr = self.base_lr * self.gamma ** bisect.bisect_right(self.lr_steps, epoch)
        if iteration < self.warmup_iters:
            k = (1.0 - iteration / self.warmup_iters) * (1.0 - self.warmup_ratio)
            lr *= 1.0 - k
        return lr

    def step(self, iteration: int, epoch: int) -> float:
        """Set the LR of every parameter group for ``iteration`` and return it."""
        self.last_lr = self.lr_at(iteration, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "lr_steps": list(self.lr_steps), "gamma": self.gamma,
                "warmup_iters": self.warmup_iters, "warmup_ratio": self.warmup_ratio, "last_lr": self.last_lr,
                "policy": self.policy, "total_iters": self.total_iters, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("base_lr", "gamma", "warmup_ratio", "last_lr"):
            setattr(self, key, float(state[key]))
        self.warmup_iters = int(state["warmup_iters"])
        self.lr_steps = [int(s) for s in state["lr_steps"]]
        self.policy = str(state.get("policy", "step"))
        self.total_iters = int(state.get("total_iters", 0))
        self.min_lr_ratio = float(state.get("min_lr_ratio", 0.0))
