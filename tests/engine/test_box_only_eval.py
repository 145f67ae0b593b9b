"""train.py's evaluation scores the result types the model produces (solo_npu.evaluation.score_types, as deploy's
evaluate stage): a box-only model (FCOS, SSD-ResNet34) on bbox alone. It used to score segm as well and report
segm AP 0.0000 for FCOS, which has no masks, in the log, summary.json and eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_support import compose_train_cfg, run_train
from omegaconf import OmegaConf

from solo_npu.evaluation import score_types

# A small FCOS: ResNet-18 trunk, narrow FPN and head; score_thr=0 so that random weights give detections to score
SMALL_FCOS = ["model=fcos", "model.depth=18", "model.style=pytorch", "model.fpn_channels=32",
              "model.feat_channels=32", "model.stacked_convs=1", "model.num_groups=8", "model.score_thr=0.0",
              "model.max_per_img=20"]
# FCOS's own pre-processing (mmdet's caffe pipeline, solo_npu.models.fcos.FCOS.preprocessing) on the smoke data's
# scale: train.py's evaluation refuses the data config's RGB pytorch normalisation for it
FCOS_PIXELS = ["data.normalize.style=caffe", "data.normalize.mean=[102.9801,115.9465,122.7717]",
               "data.normalize.std=[1,1,1]", "model.deploy.input_shape=[1,3,128,160]"]


def test_score_types_of_every_model() -> None:
    from solo_npu.models.fcos import FCOS
    from solo_npu.models.solov2.model import SOLOv2
    from solo_npu.models.ssd_resnet34 import SSDResNet34
    from solo_npu.models.yolact_edge import YolactEdge

    assert score_types(FCOS.iou_types) == ("bbox",)
    assert score_types(SSDResNet34.iou_types) == ("bbox",)
    assert score_types(SOLOv2.iou_types) == ("segm", "bbox")
    assert score_types(YolactEdge.iou_types) == ("segm", "bbox")
    with pytest.raises(ValueError, match="'keypoints'"):
        score_types(("keypoints",))


def test_fcos_eval_has_bbox_ap_only(smoke_data: list[str], synthetic_coco: Path, tmp_path: Path) -> None:
    from solo_npu.models import build_model

    classes = len(json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())["categories"])
    model_cfg = OmegaConf.to_container(compose_train_cfg(["+experiment=smoke", *SMALL_FCOS]).model, resolve=True)
    model_cfg["num_classes"] = classes
    torch.manual_seed(0)
    ckpt = tmp_path / "fcos_small.pth"
    torch.save({"state_dict": build_model(OmegaConf.create(model_cfg)).state_dict()}, ckpt)
    run_dir = tmp_path / "run"
    summary = run_train([*smoke_data, *SMALL_FCOS, *FCOS_PIXELS, f"checkpoint={ckpt}"], run_dir, "eval")
    log = (run_dir / "train.log").read_text()
    assert log.count("COCO bbox evaluation") == 1  # random weights at score_thr=0 detect: COCOeval scored them
    assert summary["iou_types"] == ["bbox"]
    assert summary["segm_ap"] is None and isinstance(summary["bbox_ap"], float)
    assert list(summary["results"]) == ["bbox"]
    assert list(json.loads((run_dir / "eval.json").read_text())) == ["bbox"]
    lines = [line.split("solo_npu.engine.job: ", 1)[1] for line in log.splitlines()
             if "solo_npu.engine.job: " in line and " AP " in line]
    assert lines == [f"bbox AP {summary['bbox_ap']:.4f}"], lines
    assert "segm" not in log, log
