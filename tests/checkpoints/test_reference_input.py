"""mmdet's and the original SOLO's SOLOv2 weights were trained pytorch-style on RGB input normalised by the
ImageNet mean and std (SOLO configs/solov2/*.py: ``style='pytorch'``, ``img_norm_cfg`` with ``to_rgb=True``; mmdet
configs/solov2/solov2_r50_fpn_1x_coco.py: ``style='pytorch'``, ``bgr_to_rgb=True``): a run that feeds them BGR
or builds a caffe-style ResNet stops with one line, unless the config text the file keeps says caffe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_convert import to_solo_names

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.checkpoints.convert import main
from solo_npu.engine.finetune import load_weights
from solo_npu.models import build_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
PYTORCH = {"style": "pytorch", "mean": None, "std": None}
CAFFE = {"style": "caffe", "mean": None, "std": None}


def tiny(style: str = "pytorch"):
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    cfg.backbone.style = style
    return build_model(cfg, num_classes=3)


def solo_file(path: Path, meta: dict) -> Path:
    """The original SOLO repository's names (mmdet 1.x: ``bbox_head.solo_cate`` ...) under ``state_dict``."""
    torch.save({"state_dict": {to_solo_names(k): v for k, v in tiny().state_dict().items()}, "meta": meta}, path)
    return path


@pytest.mark.parametrize("layout", ["solo", "mmdet"])
def test_pytorch_trained_weights_refuse_caffe_input(tmp_path: Path, layout: str) -> None:
    if layout == "solo":
        path = solo_file(tmp_path / "SOLOv2_LIGHT_448_R18_3x.pth", {"mmdet_version": "1.0.0",
                                                                    "CLASSES": ["a", "b", "c"]})
    else:
        path = save_checkpoint({"state_dict": tiny().state_dict(), "meta": {"mmdet_version": "3.3.0"}},
                               tmp_path / "solov2_r50.pth")
    load_weights(tiny(), str(path), normalize=PYTORCH)  # what they were trained on
    for model, normalize, wrong in ((tiny(), CAFFE, "normalize.style=caffe"),
                                    (tiny("caffe"), PYTORCH, "backbone.style=caffe")):
        with pytest.raises(CheckpointError, match="weights expect a pytorch-style ResNet fed RGB pixels") as info:
            load_weights(model, str(path), normalize=normalize)
        assert wrong in str(info.value) and "add model.backbone.style=pytorch data.normalize.style=pytorch" in str(
            info.value) and "\n" not in str(info.value)
    # converted, the file keeps what it came from, and the check with it
    out = tmp_path / "converted.pth"
    assert main([str(path), str(out)]) == 0
    with pytest.raises(CheckpointError, match="pytorch-style"):
        load_weights(tiny(), str(out), normalize=CAFFE)


def test_mmdet_file_whose_config_says_caffe_is_taken_as_caffe(tmp_path: Path) -> None:
    cfg = "model = dict(\n    backbone=dict(\n        type='ResNet',\n        style='caffe',\n        depth=18))\n"
    path = save_checkpoint({"state_dict": tiny("caffe").state_dict(), "meta": {"cfg": cfg}}, tmp_path / "caffe.pth")
    load_weights(tiny("caffe"), str(path), normalize=CAFFE)
    out = tmp_path / "converted.pth"
    assert main([str(path), str(out)]) == 0 and load_checkpoint(out)["meta"]["cfg"] == cfg
    load_weights(tiny("caffe"), str(out), normalize=CAFFE)
    # and refused where the run feeds it otherwise: a pytorch-style ResNet, or RGB ImageNet normalisation
    for model, normalize, wrong in ((tiny(), CAFFE, "backbone.style=pytorch"),
                                    (tiny("caffe"), PYTORCH, "normalize.style=pytorch")):
        with pytest.raises(CheckpointError, match=r"trained on a caffe-style ResNet \(style='caffe' in the config "
                                                  r"the file keeps\)") as info:
            load_weights(model, str(path), normalize=normalize)
        assert wrong in str(info.value) and "add model.backbone.style=caffe data.normalize.style=caffe" in str(
            info.value) and "\n" not in str(info.value)
