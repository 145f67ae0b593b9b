"""YolactEdge priors against the reference definition.

Reference: haotian-liu/yolact_edge (now WisconsinAIVision/yolact_edge) at 873fceb,
``yolact_edge/yolact.py`` ``PredictionModule.make_priors`` (lines 262-301): for each position
``(j, i)`` row-major, ``x = (i + 0.5) / conv_w``, ``y = (j + 0.5) / conv_h``; for each aspect ratio,
``ar = sqrt(ar)`` unless ``preapply_sqrt`` (277-278); with ``use_pixel_scales``
``w = scale * ar / max_size``, ``h = scale / ar / max_size``, otherwise ``w = scale * ar / conv_w``,
``h = scale / ar / conv_h`` (280-290); ``use_square_anchors`` sets ``h = w`` (293-294).

``yolact_edge/data/config.py``: ``yolact_base_config`` sets ``max_size`` 550 (732), the backbone's
``use_pixel_scales`` True, ``preapply_sqrt`` False, ``use_square_anchors`` True (744-746),
``pred_aspect_ratios`` ``[[1, 1/2, 2]]`` and ``pred_scales`` ``[[24], [48], [96], [192], [384]]`` for the five
levels (748-749); ``yolact_resnet50_config`` (the backbone of ``yolact_edge_resnet50_config``) repeats
the three switches (903-905). ``backbone_base`` defaults are ``use_pixel_scales`` False,
``preapply_sqrt`` True, ``use_square_anchors`` False (285-287).

The expected rows below are written out by hand from that definition, not from the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.models.ops import decode_center_size, yolact_priors
from solo_npu.models.yolact_edge import build_yolact_edge

R50_SIZES = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]  # P3..P7 of a 550x550 input
S1, SH, S2 = 1.0, math.sqrt(0.5), math.sqrt(2.0)  # sqrt of the aspect ratios 1, 1/2, 2 (preapply_sqrt False)

# (row, (cx, cy, w, h)): every prior is square (use_square_anchors) with side scale * sqrt(ar) / 550.
# Level offsets: 0, 69*69*3 = 14283, +35*35*3 = 17958, +18*18*3 = 18930, +9*9*3 = 19173.
R50_ROWS = [
    # P3 (69x69, scale 24), position j=2, i=5: row (2 * 69 + 5) * 3 = 429
    (429, (5.5 / 69, 2.5 / 69, 24 * S1 / 550, 24 * S1 / 550)),    # side 0.043636
    (430, (5.5 / 69, 2.5 / 69, 24 * SH / 550, 24 * SH / 550)),    # side 0.030856
    (431, (5.5 / 69, 2.5 / 69, 24 * S2 / 550, 24 * S2 / 550)),    # side 0.061711
    # P4 (35x35, scale 48), position j=34, i=0: row 14283 + 34 * 35 * 3 = 17853
    (17853, (0.5 / 35, 34.5 / 35, 48 / 550, 48 / 550)),
    (17854, (0.5 / 35, 34.5 / 35, 48 * SH / 550, 48 * SH / 550)),  # side 0.061711
    (17855, (0.5 / 35, 34.5 / 35, 48 * S2 / 550, 48 * S2 / 550)),  # side 0.123423
    # P5 (18x18, scale 96), position j=7, i=11: row 17958 + (7 * 18 + 11) * 3 = 18369
    (18369, (11.5 / 18, 7.5 / 18, 96 / 550, 96 / 550)),
    (18370, (11.5 / 18, 7.5 / 18, 96 * SH / 550, 96 * SH / 550)),
    (18371, (11.5 / 18, 7.5 / 18, 96 * S2 / 550, 96 * S2 / 550)),
    # P6 (9x9, scale 192), centre position j=i=4: row 18930 + 40 * 3 = 19050
    (19050, (0.5, 0.5, 192 / 550, 192 / 550)),
    (19051, (0.5, 0.5, 192 * SH / 550, 192 * SH / 550)),           # side 0.246842
    (19052, (0.5, 0.5, 192 * S2 / 550, 192 * S2 / 550)),           # side 0.493685
    # P7 (5x5, scale 384), last position j=i=4: rows 19245..19247
    (19245, (0.9, 0.9, 384 / 550, 384 / 550)),                     # side 0.698182
    (19246, (0.9, 0.9, 384 * SH / 550, 384 * SH / 550)),           # side 0.493685
    (19247, (0.9, 0.9, 384 * S2 / 550, 384 * S2 / 550)),           # side 0.987370
]


def expected(rows: list[tuple[int, tuple[float, ...]]]) -> tuple[list[int], torch.Tensor]:
    # The reference builds a list of Python floats and converts it with torch.Tensor (float32).
    return [r for r, _ in rows], torch.tensor([v for _, v in rows], dtype=torch.float32)


def test_r50_priors_match_the_reference_rows_and_count() -> None:
    priors = yolact_priors(R50_SIZES)  # defaults: the R50 configuration
    assert priors.shape == (19248, 4) and priors.dtype == torch.float32
    idx, rows = expected(R50_ROWS)
    torch.testing.assert_close(priors[idx], rows, rtol=0, atol=0)
    # The two non-square aspect ratios give sides sqrt(1/2) and sqrt(2) times the scale, not 1/2 and 2.
    torch.testing.assert_close(priors[430, 2] / priors[429, 2], torch.tensor(math.sqrt(0.5)))
    torch.testing.assert_close(priors[431, 2] / priors[429, 2], torch.tensor(math.sqrt(2.0)))


def test_model_and_yaml_use_the_r50_configuration() -> None:
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "yolact_edge.yaml")
    assert list(cfg.scales) == [24, 48, 96, 192, 384] and list(cfg.aspect_ratios) == [1.0, 0.5, 2.0]
    assert cfg.max_size == 550
    assert (cfg.preapply_sqrt, cfg.use_pixel_scales, cfg.use_square_anchors) == (False, True, True)
    model = build_yolact_edge(depth=18, fpn_channels=8, proto_channels=8, mask_dim=4)  # builder defaults
    idx, rows = expected(R50_ROWS)
    priors = model.priors(R50_SIZES)
    assert priors.shape == (19248, 4)
    torch.testing.assert_close(priors[idx], rows, rtol=0, atol=0)


def test_zero_offsets_decode_to_the_prior_box() -> None:
    """YOLACT's ``box_utils.decode`` with variances (0.1, 0.2): zero offsets give the prior itself."""
    priors = yolact_priors(R50_SIZES)
    boxes = decode_center_size(torch.zeros(1, priors.shape[0], 4), priors, (0.1, 0.2))[0]
    side = 384 * math.sqrt(2.0) / 550
    torch.testing.assert_close(boxes[19247], torch.tensor([0.9 - side / 2, 0.9 - side / 2,
                                                           0.9 + side / 2, 0.9 + side / 2]))


@pytest.mark.parametrize("switches, rows", [
    # backbone_base defaults: ratios already square-rooted, sides relative to the feature map, not square
    (dict(preapply_sqrt=True, use_pixel_scales=False, use_square_anchors=False),
     [(0, (0.5 / 4, 0.5 / 2, 2 * 1 / 4, 2 / 1 / 2)),
      (1, (0.5 / 4, 0.5 / 2, 2 * 0.5 / 4, 2 / 0.5 / 2)),
      (5, (1.5 / 4, 0.5 / 2, 2 * 3.0 / 4, 2 / 3.0 / 2)),
      (21, (3.5 / 4, 1.5 / 2, 2 * 1 / 4, 2 / 1 / 2))]),
    # pixel scales, square-rooted here, not square
    (dict(preapply_sqrt=False, use_pixel_scales=True, use_square_anchors=False),
     [(1, (0.5 / 4, 0.5 / 2, 2 * math.sqrt(0.5) / 64, 2 / math.sqrt(0.5) / 64)),
      (23, (3.5 / 4, 1.5 / 2, 2 * math.sqrt(3.0) / 64, 2 / math.sqrt(3.0) / 64))]),
    # ratios taken as given, pixel scales, square: h = w = scale * ar / max_size
    (dict(preapply_sqrt=True, use_pixel_scales=True, use_square_anchors=True),
     [(1, (0.5 / 4, 0.5 / 2, 2 * 0.5 / 64, 2 * 0.5 / 64)),
      (23, (3.5 / 4, 1.5 / 2, 2 * 3.0 / 64, 2 * 3.0 / 64))]),
])
def test_reference_switches(switches: dict, rows: list) -> None:
    priors = yolact_priors([(2, 4)], scales=[2], aspect_ratios=[1.0, 0.5, 3.0], max_size=64, **switches)
    assert priors.shape == (2 * 4 * 3, 4)
    idx, ref = expected(rows)
    torch.testing.assert_close(priors[idx], ref, rtol=0, atol=0)


def test_another_input_side_needs_max_size_set_to_it() -> None:
    """YolactEdge's ``max_size`` is its input side (the image is resized to max_size x max_size), so a 24 px prior
    of a 512x512 input is 24 / 512 wide: with max_size left at 550 every prior would be 512/550 of that."""
    from solo_npu.deploy.context import DeployError, resolve_settings

    kept = build_yolact_edge(depth=18, fpn_channels=16, proto_channels=8, mask_dim=4)  # max_size 550
    resized = build_yolact_edge(depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=512)
    kept.check_input_shape(550, 550)
    resized.check_input_shape(512, 512)
    with pytest.raises(ValueError, match="a 512x512 input needs model.max_size=512"):
        kept.check_input_shape(512, 512)
    with pytest.raises(ValueError, match="square input"):
        resized.check_input_shape(512, 640)
    # P3 of a 512x512 input is 64x64; its first prior is 24 px of 512 (make_priors: w = scale * ar / max_size)
    assert resized.priors([(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)])[0, 2].item() == pytest.approx(24 / 512)
    cfg = OmegaConf.create({"deploy": {"input_shape": [1, 3, 512, 512]},
                            "model": OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model"
                                                    / "yolact_edge.yaml")})
    with pytest.raises(DeployError, match=r"deploy.input_shape=\[512, 512\]: YolactEdge sizes its priors"):
        resolve_settings(cfg, 1, kept.check_input_shape)
