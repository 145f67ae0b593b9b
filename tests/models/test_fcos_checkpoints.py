"""FCOS reference checkpoints: the head norm (``model.head.norm``) and mmdet's improved FCOS.

Fake files with mmdet v1's key names, no downloads. mmdet v1 ``mmdet/models/anchor_heads/fcos_head.py``
(open-mmlab/mmdetection) builds each stacked head conv as ``ConvModule(..., norm_cfg=self.norm_cfg,
bias=self.norm_cfg is None)``, so:

* ``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth`` (mmdet v1 configs/fcos/README.md: GN "N"; the file the
  Ascend ModelZoo FCOS guide deploys, whose config Ascend/ModelZoo-PyTorch
  ACL_PyTorch/contrib/cv/detection/Fcos/fcos_r50_caffe_fpn_4x4_1x_coco.py sets ``norm_cfg=None``) keeps
  ``cls_convs.i.conv.weight`` and ``cls_convs.i.conv.bias``, no norm;
* ``fcos_r50_caffe_fpn_gn_1x_4gpu_20190516-9f253a93.pth`` (GN "Y") keeps ``cls_convs.i.conv.weight`` and
  ``cls_convs.i.gn.{weight,bias}``, no conv bias.

The predictors are ``fcos_cls`` / ``fcos_reg`` / ``fcos_centerness`` and ``scales.i.scale`` a 0-d parameter.
mmdet's improved FCOS (configs/fcos/fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco.py:
``norm_on_bbox=True, centerness_on_reg=True, conv_bias=True``, mean ``[103.530, 116.280, 123.675]``) decodes
``relu(scale * x) * stride`` (mmdet/models/dense_heads/fcos_head.py ``forward_single``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError
from solo_npu.checkpoints.convert import load_model_weights
from solo_npu.models import build_model
from solo_npu.models.fcos import build_fcos

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
TINY = dict(num_classes=5, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2, num_groups=4, nms_pre=40)
V1_CONFIG = ("model = dict(\n    type='FCOS',\n    bbox_head=dict(\n        type='FCOSHead',\n"
             "        num_classes=81,\n        norm_cfg=None))\n")
IMPROVED_CONFIG = "model = dict(\n    bbox_head=dict(\n        type='FCOSHead',\n        norm_on_bbox=True,\n" \
                  "        centerness_on_reg=True,\n        center_sampling=True,\n        conv_bias=True))\n"
CENTER_ON_REG_CONFIG = "model = dict(bbox_head=dict(type='FCOSHead', centerness_on_reg=True))\n"


def v1_head(norm: str, classes: int = 5, channels: int = 16, stacked: int = 2, levels: int = 5,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """An mmdet v1 FCOS head state dict written from mmdet v1's fcos_head.py: ``norm`` ``none`` (conv bias),
    ``gn`` (GroupNorm) or ``gn+bias`` (both, mmdet's ``conv_bias=True``)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    out = {}
    for branch in ("cls_convs", "reg_convs"):
        for i in range(stacked):
            out[f"bbox_head.{branch}.{i}.conv.weight"] = rand(channels, channels, 3, 3)
            if norm in ("none", "gn+bias"):
                out[f"bbox_head.{branch}.{i}.conv.bias"] = rand(channels)
            if norm in ("gn", "gn+bias"):
                out[f"bbox_head.{branch}.{i}.gn.weight"] = 1 + rand(channels)
                out[f"bbox_head.{branch}.{i}.gn.bias"] = rand(channels)
    for name, cout in (("fcos_cls", classes), ("fcos_reg", 4), ("fcos_centerness", 1)):
        out[f"bbox_head.{name}.weight"] = rand(cout, channels, 3, 3)
        out[f"bbox_head.{name}.bias"] = rand(cout)
    out.update({f"bbox_head.scales.{i}.scale": torch.tensor(1.0 + 0.1 * i) for i in range(levels)})
    return out


def v1_file(tmp_path, norm: str, config: str | None = None, meta_key: str = "config") -> str:
    """An mmdet v1-style checkpoint: our backbone / neck names (mmdet's) and a v1 head of ``norm``."""
    body = {k: v for k, v in build_fcos(**TINY).state_dict().items() if not k.startswith("bbox_head.")}
    meta = {"mmdet_version": "0.6.0+a7cac5f"}
    if config is not None:
        meta[meta_key] = config
    path = tmp_path / f"fcos_v1_{norm}.pth"
    torch.save({"meta": meta, "state_dict": {**body, **v1_head(norm)}}, path)
    return str(path)


@pytest.mark.parametrize("norm", ["none", "gn"])
def test_each_v1_file_loads_strict_into_the_head_of_its_norm(tmp_path, norm: str) -> None:
    path = v1_file(tmp_path, norm)
    model = build_fcos(**TINY, head={"norm": norm})
    report = load_model_weights(model, path)
    assert report["source"] == "fcos" and not report["unexpected"]
    assert not [k for k in report["missing"] if not k.endswith("num_batches_tracked")]
    conv = model.bbox_head.cls_convs[1]
    head = v1_head(norm)
    torch.testing.assert_close(conv.conv.weight, head["bbox_head.cls_convs.1.conv.weight"])
    if norm == "none":  # the conv's bias is the file's, and there is no norm
        torch.testing.assert_close(conv.conv.bias, head["bbox_head.cls_convs.1.conv.bias"])
        assert not hasattr(conv, "gn")
    else:
        assert conv.conv.bias is None
        torch.testing.assert_close(conv.gn.weight, head["bbox_head.cls_convs.1.gn.weight"])
    torch.testing.assert_close(model.bbox_head.conv_centerness.bias, head["bbox_head.fcos_centerness.bias"])


def test_the_guides_file_loads_with_the_default_config(tmp_path) -> None:
    # conf/model/fcos.yaml names the guide's a7cac5ff file: its head (no norm, conv biases) is the default
    conf = OmegaConf.load(CONF / "fcos.yaml")
    assert conf.head.norm == "none"
    model = build_model(OmegaConf.merge(conf, {k: v for k, v in TINY.items() if k != "nms_pre"}))
    assert model.bbox_head.cls_convs[0].conv.bias is not None and not hasattr(model.bbox_head.cls_convs[0], "gn")
    assert load_model_weights(model, v1_file(tmp_path, "none"))["source"] == "fcos"
    assert build_fcos(**TINY).head_norm == "none"  # the builder's default too


@pytest.mark.parametrize("file_norm, model_norm, wanted", [
    ("gn", "none", "model.head.norm=gn"),
    ("none", "gn", "model.head.norm=none"),
])
def test_a_file_of_the_other_head_is_one_line_naming_the_setting(tmp_path, file_norm, model_norm, wanted) -> None:
    path = v1_file(tmp_path, file_norm)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(build_fcos(**TINY, head={"norm": model_norm}), path)
    message = str(err.value)
    assert "\n" not in message and message.endswith(f"add {wanted}") and path in message
    assert ("gn.weight" in message) == (file_norm == "gn") and ("conv.bias" in message) == (file_norm == "none")


def test_the_head_setting_accepts_none_null_and_gn_only() -> None:
    assert build_fcos(**TINY, head={"norm": None}).head_norm == "none"
    assert build_fcos(**TINY, head={"norm": "GN"}).head_norm == "gn"
    with pytest.raises(ValueError, match="model.head.norm='bn'"):
        build_fcos(**TINY, head={"norm": "bn"})


@pytest.mark.parametrize("model_norm", ["none", "gn"])
def test_a_head_with_gn_and_conv_bias_is_refused(tmp_path, model_norm: str) -> None:
    # mmdet's improved FCOS keeps both (conv_bias=True with GN): no model.head.norm loads it
    with pytest.raises(CheckpointError, match="GroupNorm and conv biases .*improved FCOS") as err:
        load_model_weights(build_fcos(**TINY, head={"norm": model_norm}), v1_file(tmp_path, "gn+bias"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("meta_key", ["config", "cfg"])  # mmdet 1.x / 2.x meta.config, mmengine meta.cfg
def test_a_config_with_norm_on_bbox_is_refused(tmp_path, meta_key: str) -> None:
    # same names and shapes as a GN file, but its boxes decode relu(scale * x) * stride
    path = v1_file(tmp_path, "gn", IMPROVED_CONFIG, meta_key)
    for centerness_on_reg in (False, True):
        model = build_fcos(**TINY, head={"norm": "gn"}, centerness_on_reg=centerness_on_reg)
        with pytest.raises(CheckpointError, match=r"norm_on_bbox=True, centerness_on_reg=True .*decodes exp") as err:
            load_model_weights(model, path)
        assert "\n" not in str(err.value) and path in str(err.value)


def test_a_config_in_mapping_form_is_read_too(tmp_path) -> None:
    text = "{'model': {'bbox_head': {'type': 'FCOSHead', 'norm_on_bbox': True}}}"
    with pytest.raises(CheckpointError, match="norm_on_bbox=True"):
        load_model_weights(build_fcos(**TINY, head={"norm": "gn"}), v1_file(tmp_path, "gn", text))


def test_centerness_on_reg_needs_the_model_setting(tmp_path) -> None:
    path = v1_file(tmp_path, "none", CENTER_ON_REG_CONFIG)
    with pytest.raises(CheckpointError, match="add model.centerness_on_reg=true$"):
        load_model_weights(build_fcos(**TINY), path)
    model = build_fcos(**TINY, centerness_on_reg=True)
    assert load_model_weights(model, path)["source"] == "fcos"


def test_a_file_trained_on_another_resnet_style_is_refused_and_its_style_feeds_its_input(tmp_path) -> None:
    # mmdet's pytorch-style FCOS configs (configs/fcos/fcos_r50_fpn_gn-head-center-normbbox-centeronreg-giou_*.py:
    # style='pytorch', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True); the guide's
    # are caffe-style (style='caffe', BGR minus [102.9801, 115.9465, 122.7717], std 1).
    pytorch_text = "model = dict(backbone=dict(type='ResNet', depth=50, style='pytorch'), bbox_head=dict(" \
                   "type='FCOSHead', norm_cfg=None))\n"
    path = v1_file(tmp_path, "none", pytorch_text)
    with pytest.raises(CheckpointError, match=r"pytorch-style ResNet .* add model.style=pytorch$"):
        load_model_weights(build_fcos(**TINY), path)
    model = build_fcos(**TINY, style="pytorch")
    assert load_model_weights(model, path)["source"] == "fcos"
    assert model.preprocessing.style == "pytorch" and model.preprocessing.mean == (123.675, 116.28, 103.53)
    assert model.preprocessing.std == (58.395, 57.12, 57.375)
    caffe = build_fcos(**TINY).preprocessing
    assert caffe.style == "caffe" and caffe.mean == (102.9801, 115.9465, 122.7717) and caffe.std == (1.0, 1.0, 1.0)
    (tmp_path / "caffe").mkdir()
    caffe_path = v1_file(tmp_path / "caffe", "none", pytorch_text.replace("'pytorch'", "'caffe'"))
    with pytest.raises(CheckpointError, match="add model.style=caffe$"):
        load_model_weights(build_fcos(**TINY, style="pytorch"), caffe_path)


def test_the_guides_config_text_loads(tmp_path) -> None:
    flags = "norm_cfg=None,\n        norm_on_bbox=False,\n        centerness_on_reg=False))"
    text = V1_CONFIG.replace("norm_cfg=None))", flags)
    assert load_model_weights(build_fcos(**TINY), v1_file(tmp_path, "none", text))["source"] == "fcos"


def test_a_converted_file_keeps_the_refusal(tmp_path) -> None:
    # convert writes our names with the source layout and the config text in meta: the check reads them
    model = build_fcos(**TINY, head={"norm": "gn"})
    path = tmp_path / "converted.pth"
    torch.save({"model": model.state_dict(), "meta": {"source": "fcos", "cfg": IMPROVED_CONFIG}}, path)
    with pytest.raises(CheckpointError, match="norm_on_bbox=True"):
        load_model_weights(model, path)
    torch.save({"model": model.state_dict(), "meta": {"source": "fcos", "cfg": V1_CONFIG}}, path)
    assert load_model_weights(model, path)["source"] == "ours"
