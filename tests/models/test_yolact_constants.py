"""YolactEdge's inference constants against the reference (haotian-liu/yolact_edge, now
WisconsinAIVision/yolact_edge, at 873fceb unless noted).

- ``yolact_edge/layers/box_utils.py`` ``decode``: variances ``[0.1, 0.2]``; centre
  ``p_xy + loc_xy * 0.1 * p_wh``, size ``p_wh * exp(loc_wh * 0.2)``, then ``x1y1 = c - wh / 2`` and
  ``x2y2 = x1y1 + wh``.
- ``yolact_edge/yolact.py`` ``Yolact.__init__``: ``Detect(cfg.num_classes, bkg_label=0, top_k=200,
  conf_thresh=0.05, nms_thresh=0.5)``.
- ``yolact_edge/data/config.py``: ``max_num_detections`` 100 (line 527), ``num_classes`` 81 with the
  background (``yolact_base_config``, 80 COCO classes + 1), ``max_size`` 550 (732).
- ``eval.py``: ``--fast_nms`` defaults to True (so COCO evaluation uses ``Detect.fast_nms``, per class,
  no second score threshold) and ``--cross_class_nms`` to False.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from solo_npu.models.yolact_edge import build_yolact_edge, yolact_decode


def reference_decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """box_utils.decode (use_yolo_regressors False), written out in the reference's order."""
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def test_decode_matches_box_utils_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(500, 2, generator=g), torch.rand(500, 2, generator=g) * 0.6 + 0.01], 1)
    loc = torch.randn(500, 4, generator=g) * 2
    assert torch.equal(yolact_decode(loc, priors), reference_decode(loc, priors))


def test_model_yaml_and_builder_defaults_are_the_references() -> None:
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "yolact_edge.yaml")
    model = build_yolact_edge(depth=18, fpn_channels=8, proto_channels=8)  # builder defaults
    for source in (cfg, model):
        assert (source.conf_thresh, source.nms_thresh, source.top_k, source.max_num_detections) == (0.05, 0.5, 200, 100)
        assert source.num_classes == 80 and source.max_size == 550  # 81-way softmax with background 0
    assert cfg.mask_dim == 32 and cfg.mask_thr == 0.5
    assert model.prediction_layers[0].conf_layer.out_channels == 3 * 81
    assert model.prediction_layers[0].mask_layer.out_channels == 3 * 32
    # said once
    assert set(cfg.deploy) == {"input_shape", "opset", "batch_sizes", "soc_version", "scored_images", "anchors"}
