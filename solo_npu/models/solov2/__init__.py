"""SOLOv2: head, target assignment, losses, Matrix NMS, post-processing and the model."""

from solo_npu.models.solov2.head import MaskFeatureHead, SOLOv2Head
from solo_npu.models.solov2.matrix_nms import matrix_nms, matrix_nms_by_class
from solo_npu.models.solov2.model import SOLOv2, build_solov2
from solo_npu.models.solov2.paste import masks_to_boxes, paste_masks
from solo_npu.models.solov2.postprocess import SOLOv2TestConfig
from solo_npu.models.solov2.targets import SOLOv2Targets, build_solov2_targets

__all__ = ["MaskFeatureHead", "SOLOv2", "SOLOv2Head", "SOLOv2Targets", "SOLOv2TestConfig", "build_solov2",
           "build_solov2_targets", "masks_to_boxes", "matrix_nms", "matrix_nms_by_class", "paste_masks"]
