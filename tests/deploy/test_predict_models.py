"""``task=predict`` with the detectors that bring their own preprocessing (FCOS, SSD-ResNet34, YolactEdge): each is
fed the input deploy's preprocess stage makes for it (FCOS: BGR with the caffe mean; SSD and YolactEdge: stretched
to their static input), and the box-only models write bbox entries and overlays with boxes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deploy_support import compose_deploy_cfg
from torch import nn

from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.predict import run_predict
from solo_npu.deploy.preprocess import load_index, run_preprocess
from solo_npu.models.fcos import build_fcos
from solo_npu.models.ssd_resnet34 import SSDResNet34
from solo_npu.models.yolact_edge import build_yolact_edge

TINY = {"fcos": (["model.depth=18", "model.fpn_channels=16", "model.feat_channels=16", "model.stacked_convs=1",
                  "model.num_groups=4", "model.nms_pre=50"], [128, 160]),
        "ssd_resnet34": ([], [320, 320]),
        "yolact_edge": ([], [128, 128])}


def tiny_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "fcos":
        model = build_fcos(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=1, num_groups=4,
                           nms_pre=50)
        with torch.no_grad():
            model.bbox_head.conv_cls.bias.fill_(0.0)  # random weights that still clear score_thr
        return model.eval()
    if name == "ssd_resnet34":
        trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                              nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        return SSDResNet34(trunk, (16, 16, 16, 8, 8, 8), (8, 8, 8, 8, 8), num_classes=3, fig_size=320,
                           max_output=20).eval()
    return build_yolact_edge(num_classes=3, depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=128,
                             top_k=20, max_num_detections=10).eval()


def deploy_cfg(name: str, root: Path, run_dir: Path, *extra: str):
    overrides, shape = TINY[name]
    return compose_deploy_cfg([f"model={name}", "data=synthetic", f"data.root={root}", "data.generate=false",
                               "model.num_classes=3", f"deploy.input_shape=[{shape[0]},{shape[1]}]",
                               "deploy.num_images=2", "stages=[preprocess]", f"run_dir={run_dir}",
                               "runtime.device=cpu", *overrides, *extra])


def image_folder(synthetic_coco: Path, folder: Path) -> list[str]:
    """The first two val images and a small one (SSD's input crashed on it when it was resized keeping its ratio)."""
    folder.mkdir(parents=True)
    names = sorted(p.name for p in (synthetic_coco / "val2017").iterdir())[:2]
    for name in names:
        shutil.copy(synthetic_coco / "val2017" / name, folder / name)
    cv2.imwrite(str(folder / "small.png"), np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    return [*names, "small.png"]


@pytest.mark.parametrize("name", ["fcos", "ssd_resnet34", "yolact_edge"])
def test_predict_feeds_the_input_of_deploys_preprocess_stage(name: str, synthetic_coco: Path, tmp_path: Path) -> None:
    model = tiny_model(name)
    cfg = deploy_cfg(name, synthetic_coco, tmp_path / "run")
    ctx = DeployContext(cfg, tmp_path / "run", name)
    ctx.set_model(model)
    run_preprocess(ctx)
    records = load_index(ctx)["images"]
    files = image_folder(synthetic_coco, tmp_path / "in")
    seen: dict[str, torch.Tensor] = {}
    predict = model.predict

    def recording(images: torch.Tensor, metas: list[dict]) -> list[dict]:
        seen.update({m["file_name"]: x.clone() for x, m in zip(images, metas)})
        return predict(images, metas)

    model.predict = recording
    shape = TINY[name][1]
    out = run_predict(model, tmp_path / "in", tmp_path / "pred", None, cfg.data, "cpu", 0.0, input_shape=shape)
    assert out["images"] == 3 and out["skipped"] == 0
    assert len(records) == 2
    for rec in records:
        expected = np.fromfile(tmp_path / "run" / rec["bin"], np.float32).reshape(3, *shape)
        np.testing.assert_array_equal(seen[rec["file_name"]].numpy(), expected)
    entries = json.loads(Path(out["predictions"]).read_text())
    assert entries and all(len(e["bbox"]) == 4 for e in entries)
    if name != "yolact_edge":  # box-only models: bbox entries, overlays with boxes
        assert all("segmentation" not in e for e in entries)
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == sorted(Path(f).stem + ".png" for f in files)


def test_box_model_from_the_command_line(synthetic_coco: Path, tmp_path: Path) -> None:
    """deploy.py task=predict model=fcos: the input shape is the deploy config's, boxes are drawn on the overlays."""
    from solo_npu.deploy.pipeline import main

    model = tiny_model("fcos")
    ckpt = tmp_path / "fcos.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    files = image_folder(synthetic_coco, tmp_path / "in")
    cfg = deploy_cfg("fcos", synthetic_coco, tmp_path / "run", "task=predict", f"checkpoint={ckpt}",
                     f"input={tmp_path / 'in'}", f"output={tmp_path / 'pred'}", "score_thr=0.0")
    assert main(cfg) == 0
    entries = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert entries and {e["file_name"] for e in entries} == set(files)
    assert {e["category_name"] for e in entries} <= {"circle", "rectangle", "triangle"}
    original = cv2.imread(str(tmp_path / "in" / files[0]))
    overlay = cv2.imread(str(tmp_path / "pred" / f"{Path(files[0]).stem}.png"))
    assert overlay is not None and not np.array_equal(cv2.resize(overlay, original.shape[1::-1]), original)
