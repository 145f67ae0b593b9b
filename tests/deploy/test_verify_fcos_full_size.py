"""verify on FCOS at the FCOS 310P guide's full input (1x3x800x1333) with random weights: candidates that float
rounding reorders in the top-k are matched as detections, so a correct export passes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.pipeline import run_pipeline
from solo_npu.models.fcos import build_fcos

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def test_fcos_verify_passes_at_800x1333(synthetic_coco: Path, tmp_path: Path) -> None:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("deploy", overrides=[
            "model=fcos", "data=synthetic", f"data.root={synthetic_coco}", "data.generate=false",
            "model.num_classes=3", "deploy.input_shape=[800,1333]", "deploy.batch_sizes=[1]",
            "deploy.backends=[onnxruntime,torchscript]", "deploy.verify.num_images=1", "stages=[export,verify]",
            f"run_dir={tmp_path}"])
    torch.manual_seed(0)
    model = build_fcos(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=1, num_groups=4)
    with torch.no_grad():
        model.bbox_head.conv_cls.bias.fill_(0.0)  # random weights whose detections clear score_thr
    ctx = DeployContext(cfg, tmp_path, "fcos")
    ctx.set_model(model)
    run_pipeline(cfg, "fcos", ctx)  # raises DeployError when a backend fails verify
    rows = json.loads((tmp_path / "verify" / "verify.json").read_text())["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {("onnxruntime", 1), ("torchscript", 1)}
    for row in rows:
        assert row["status"] == "ok" and row["detections"] >= 10  # real detections were matched
        assert row["matched"] >= row["detections"] - 1 and row["unmatched"] == 0
