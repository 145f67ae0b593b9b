"""A fifth model is one model file, one yaml and its tests: the toy detector of the test tree goes through
export, verify, preprocess, infer and evaluate, built from its yaml and loaded from a checkpoint by the
same code as the four detectors of solo_npu/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from solo_npu.checkpoints import save_checkpoint
from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.pipeline import run_pipeline

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_toy_detector_deploys_through_the_pipeline(deploy_cfg, tmp_path) -> None:
    import toy_detector

    torch.manual_seed(0)
    trained = toy_detector.build_toy_detector(num_classes=3)
    ckpt = save_checkpoint({"model": trained.state_dict(),
                            "meta": {"dataset_meta": {"classes": ["circle", "rectangle", "triangle"]}}},
                           tmp_path / "toy.pth")
    cfg = deploy_cfg(f"checkpoint={ckpt}", "deploy.backends=[pytorch,torchscript,onnxruntime]",
                     "deploy.batch_sizes=[2]", "deploy.slim=false",
                     "stages=[export,verify,preprocess,infer,evaluate]")
    with open_dict(cfg):
        cfg.model = OmegaConf.load(HERE / "toy_detector.yaml")
        cfg.deploy.input_shape = None  # the toy yaml's deploy.input_shape decides
    ctx = run_pipeline(cfg, "toy", DeployContext(cfg, tmp_path / "run", "toy"))

    model = ctx.model()  # built from the yaml, weights read by the one checkpoint path
    assert isinstance(model, toy_detector.ToyDetector) and model.num_classes == 3
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert ctx.classes.names == ("circle", "rectangle", "triangle")
    assert ctx.adapter.anchors == [{"source": "toy figures", "device": "none", "batch": 1, "fps": 1.0}]

    manifest = json.loads(ctx.path("export", "manifest.json").read_text())
    assert manifest["output_names"] == ["boxes", "scores", "labels"] and manifest["input_shape"] == [3, 128, 160]
    assert manifest["outputs"]["labels"] == {"shape": [10], "dtype": "int32"}
    verify = json.loads(ctx.path("verify", "verify.json").read_text())
    assert {r["backend"] for r in verify["rows"]} == {"pytorch", "torchscript", "onnxruntime"}
    # sigmoid of an untrained classifier clears score_thr: every slot is a detection, and each is matched
    assert all(r["status"] == "ok" and r["detections"] > 0 and r["matched"] == r["detections"]
               for r in verify["rows"])
    for backend in ("pytorch", "torchscript", "onnxruntime"):
        metrics = ctx.results["evaluate"][f"{backend}_b2"]["metrics"]
        assert set(metrics) == {"bbox"} and 0.0 <= metrics["bbox"]["AP"] <= 1.0
        results = json.loads(ctx.path("evaluate", f"{backend}_b2.json").read_text())
        assert len(results) == 10 * 8 and {r["category_id"] for r in results} <= {1, 3, 7}


def test_nothing_under_solo_npu_names_the_toy() -> None:
    found = subprocess.run(["grep", "-rl", "toy_detector\\|ToyDetector", str(ROOT / "solo_npu")],
                           capture_output=True, text=True)
    assert found.returncode == 1 and found.stdout == ""  # grep: no match
