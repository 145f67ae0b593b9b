"""A toy box detector that lives only in the test tree: what a new model needs to deploy.

One stride-8 convolution, per cell a class score (sigmoid) and four box distances; the static graph keeps
the ``topk`` best cells. Everything the deploy pipeline and the checkpoint loader ask of a model is here
(solo_npu/models/contract.py); nothing under solo_npu/ names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from solo_npu.models.contract import Preprocessing, as_float_tensor
from solo_npu.models.ops import boxes_to_original

STRIDE = 8


class ToyDetector(nn.Module):
    output_names = ("boxes", "scores", "labels")
    iou_types = ("bbox",)
    size_divisor = STRIDE
    preprocessing = Preprocessing("stretch", "pytorch", pad_position="top_left")
    classifier_prefixes = ("cls.",)

    def __init__(self, num_classes: int = 3, channels: int = 8, topk: int = 10, score_thr: float = 0.05) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, STRIDE, 1), nn.ReLU())
        self.cls = nn.Conv2d(channels, num_classes, 1)
        self.box = nn.Conv2d(channels, 4, 1)
        self.num_classes, self.topk, self.score_thr = num_classes, topk, score_thr

    def export_forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``boxes [B, K, 4]`` (canvas pixels), ``scores [B, K]``, ``labels [B, K]`` int32: the K best cells."""
        feats = self.stem(images)
        h, w = feats.shape[-2:]
        best, labels = self.cls(feats).sigmoid().flatten(2).max(dim=1)  # [B, HW]
        scores, cell = best.topk(self.topk, dim=1)
        ys, xs = torch.meshgrid(torch.arange(h, device=images.device), torch.arange(w, device=images.device),
                                indexing="ij")
        centres = (torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * STRIDE  # [HW, 2]
        dist = self.box(feats).flatten(2).transpose(1, 2).clamp(max=4).exp() * STRIDE  # [B, HW, 4]
        boxes = torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], dim=-1)
        boxes = boxes.gather(1, cell[..., None].expand(-1, -1, 4))
        return boxes, scores, labels.gather(1, cell).to(torch.int32)

    def postprocess(self, outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Tensor]:
        scores = as_float_tensor(outputs["scores"])
        keep = scores > self.score_thr
        boxes = boxes_to_original(as_float_tensor(outputs["boxes"])[keep], meta)
        labels = torch.as_tensor(np.asarray(outputs["labels"]).astype(np.int64))[keep]
        return {"boxes": boxes, "scores": scores[keep], "labels": labels}

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        outputs = self.export_forward(images)
        return [self.postprocess({n: o[i] for n, o in zip(self.output_names, outputs)}, meta)
                for i, meta in enumerate(metas)]


def build_toy_detector(num_classes: int = 3, channels: int = 8, topk: int = 10, score_thr: float = 0.05,
                       name: str = "toy") -> ToyDetector:
    model = ToyDetector(num_classes, channels, topk, score_thr)
    model.name = name
    return model.eval()
