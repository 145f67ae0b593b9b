"""Detection ops in plain PyTorch: IoU, NMS (greedy, batched, multi-class, Fast NMS), box coding, priors,
and the inference-time in-place sum."""

from solo_npu.models.ops.box_coding import (
    bbox2distance,
    centerness_target,
    cxcywh_to_xyxy,
    decode_center_size,
    distance2bbox,
    encode_center_size,
    xyxy_to_cxcywh,
)
from solo_npu.models.ops.boxes import (
    batched_nms,
    box_area,
    box_iou,
    fast_nms,
    multiclass_nms,
    nms,
    pairwise_box_iou,
)
from solo_npu.models.ops.geometry import boxes_to_original
from solo_npu.models.ops.priors import fcos_points, ssd_default_boxes, yolact_priors
from solo_npu.models.ops.sums import inference_add

__all__ = [
    "batched_nms",
    "bbox2distance",
    "box_area",
    "boxes_to_original",
    "box_iou",
    "centerness_target",
    "cxcywh_to_xyxy",
    "decode_center_size",
    "distance2bbox",
    "encode_center_size",
    "fast_nms",
    "fcos_points",
    "inference_add",
    "multiclass_nms",
    "nms",
    "pairwise_box_iou",
    "ssd_default_boxes",
    "xyxy_to_cxcywh",
    "yolact_priors",
]
