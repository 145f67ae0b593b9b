"""Distributed COCO evaluation of a model on a data loader."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from solo_npu.engine import comm
from solo_npu.engine.checkpointer import unwrap
from solo_npu.runtime import DeviceInfo, autocast

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, evaluator: Any, info: DeviceInfo, amp: bool = False,
             amp_dtype: str = "fp16") -> dict[str, dict[str, float]]:
    """Run ``model.predict`` over ``loader`` and score it with ``evaluator`` (a CocoEvaluator).

    Every rank predicts its shard; ``evaluator.evaluate()`` gathers and scores. The model is left in
    eval mode; callers that continue training switch it back.
    """
    net = unwrap(model)
    comm.broadcast_buffers(net)  # rank 0's BatchNorm statistics, those its checkpoints hold, on every rank
    net.eval()
    evaluator.reset()
    t0 = time.perf_counter()
    images = 0
    for batch in loader:
        inputs = batch["images"].to(info.device, non_blocking=True)
        with autocast(info, amp, amp_dtype):
            results = net.predict(inputs, batch["metas"])
        evaluator.process(batch["metas"], results)
        images += inputs.shape[0]
    seconds = time.perf_counter() - t0
    logger.info("predicted %d images in %.1f s (%.2f images/s on this rank)", images, seconds,
                images / max(seconds, 1e-9))
    return evaluator.evaluate()
