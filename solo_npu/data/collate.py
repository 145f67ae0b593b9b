"""Fixed-shape batch collation (see the batch contract in docs/architecture.md).

Images are padded to one canvas (a fixed one, or the batch maximum rounded up to a size divisor)
and the ground truth to M instance slots with a ``gt_valid`` mask. The loader always hands over the
smallest rung of a short ladder that holds every instance of the batch: a COCO image has 7 instances on
average, so most batches carry 8-16 canvas-size mask slots instead of 100 through the workers' shared
memory. With ``instance_slots="fixed"`` (one shape for every training step) the batch also says
``instance_slots: max_instances`` and :func:`pad_instance_slots` pads it to that many slots where it
lands, on the device, after the copy (the trainer's ``move_batch`` does this), so the model still sees one
shape while shared memory and the workers only carry real instances.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from solo_npu.data.transforms import canvas_size, pad_offset

__all__ = ["SLOT_LADDER", "FixedShapeCollate", "pad_instance_slots"]

logger = logging.getLogger("solo_npu.data")
SLOT_LADDER = (8, 16, 32, 64)  # rungs below max_instances; max_instances is always the top rung


class FixedShapeCollate:
    """Collate transformed samples into the batch dict.

    Args:
        max_instances: the most ground-truth slots per image (an image with more keeps its largest instances,
            in their order).
        instance_slots: ``ladder`` (M = the smallest rung of ``slot_ladder`` + [``max_instances``] that
            holds every kept instance of the batch) or ``fixed`` (the same batch, marked to be padded to
            M = ``max_instances`` on the device: :func:`pad_instance_slots`).
        slot_ladder: the rungs below ``max_instances``.
        mode: ``divisor`` or ``fixed`` (see :func:`solo_npu.data.transforms.canvas_size`).
        size_divisor: canvas multiple in ``divisor`` mode.
        canvas: ``[H, W]`` in ``fixed`` mode.
        position: ``top_left`` or ``centre`` placement of each image on the canvas.
    """

    def __init__(self, max_instances: int = 100, mode: str = "divisor", size_divisor: int = 32,
                 canvas: Sequence[int] | None = None, position: str = "top_left",
                 instance_slots: str = "fixed", slot_ladder: Sequence[int] = SLOT_LADDER) -> None:
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        if instance_slots not in ("fixed", "ladder"):
            raise ValueError(f"instance_slots must be 'fixed' or 'ladder', got {instance_slots!r}")
        self.max_instances = int(max_instances)
        self.instance_slots = instance_slots
        rungs = sorted({int(r) for r in slot_ladder if 0 < int(r) < self.max_instances})
        self.rungs = (*rungs, self.max_instances)
        self.mode = mode
        self.size_divisor = int(size_divisor)
        self.canvas = tuple(int(c) for c in canvas) if canvas is not None else None
        self.position = position
        pad_offset((0, 0), (0, 0), position)  # validate early
        self.num_truncated = 0

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        shapes = [tuple(s["image"].shape[-2:]) for s in samples]
        hc, wc = canvas_size(shapes, self.mode, self.size_divisor, self.canvas)
        keeps = [self._keep(s) for s in samples]
        most = max(len(k) for k in keeps)
        b, m = len(samples), next(r for r in self.rungs if r >= most)
        with_masks = all(s.get("masks") is not None for s in samples)
        images = torch.zeros(b, 3, hc, wc, dtype=torch.float32)
        gt_masks = torch.zeros(b, m, hc, wc, dtype=torch.uint8) if with_masks else None
        gt_labels = torch.full((b, m), -1, dtype=torch.int64)
        gt_boxes = torch.zeros(b, m, 4, dtype=torch.float32)
        gt_valid = torch.zeros(b, m, dtype=torch.bool)
        metas = []
        for i, s in enumerate(samples):
            h, w = shapes[i]
            top, left = pad_offset((h, w), (hc, wc), self.position)
            images[i, :, top:top + h, left:left + w] = torch.as_tensor(s["image"])
            keep = keeps[i]
            n = len(keep)
            gt_labels[i, :n] = torch.as_tensor(s["labels"][keep])
            gt_boxes[i, :n] = torch.as_tensor(s["boxes"][keep]) + torch.tensor([left, top, left, top],
                                                                                 dtype=torch.float32)
            gt_valid[i, :n] = True
            if gt_masks is not None and n:
                gt_masks[i, :n, top:top + h, left:left + w] = torch.as_tensor(s["masks"][keep])
            meta = dict(s["meta"])
            meta.update(pad=(top, left), canvas=(hc, wc))
            metas.append(meta)
        batch = {"images": images, "gt_labels": gt_labels, "gt_boxes": gt_boxes, "gt_valid": gt_valid,
                 "metas": metas}
        if gt_masks is not None:
            batch["gt_masks"] = gt_masks
        if self.instance_slots == "fixed":
            batch["instance_slots"] = self.max_instances
        return batch

    def _keep(self, sample: dict[str, Any]) -> np.ndarray:
        """Indices of the instances that fit the slots: all of them, or the largest M (by mask or box area)."""
        n = len(sample["labels"])
        if n <= self.max_instances:
            return np.arange(n)
        if sample.get("masks") is not None:
            area = sample["masks"].reshape(n, -1).sum(axis=1, dtype=np.int64)
        else:
            boxes = sample["boxes"]
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        self.num_truncated += 1
        logger.warning("%s: %d instances, keeping the largest %d (max_instances)",
                       sample["meta"].get("file_name"), n, self.max_instances)
        # In annotation order, as the dataset keeps them: the SOLOv2 targets give a cell that two instances share
        # to the later one (mmdet's SOLOV2Head._get_targets_single assigns the labels instance after instance).
        return np.sort(np.argsort(-area, kind="stable")[: self.max_instances])


_SLOT_FILL = {"gt_masks": 0, "gt_labels": -1, "gt_boxes": 0, "gt_valid": False}


def pad_instance_slots(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its ground truth padded to ``batch["instance_slots"]`` slots (empty slots: label -1,
    zero masks and boxes, ``gt_valid`` False), on the tensors' device; a batch without that key as it is."""
    slots = batch.get("instance_slots")
    valid = batch.get("gt_valid")
    if slots is None or valid is None or valid.shape[1] >= int(slots):
        return batch
    out = dict(batch)
    for key, fill in _SLOT_FILL.items():
        t = batch.get(key)
        if t is None:
            continue
        pad = t.new_full((t.shape[0], int(slots) - t.shape[1], *t.shape[2:]), fill)
        out[key] = torch.cat([t, pad], dim=1)
    return out
