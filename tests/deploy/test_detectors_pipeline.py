"""The deploy pipeline (export -> preprocess -> onnxruntime -> evaluate) for FCOS, YolactEdge and SSD-ResNet34
on the synthetic val set, with tiny random-weight models: a COCO-valid result file and an AP number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.pipeline import run_pipeline
from solo_npu.models.fcos import build_fcos
from solo_npu.models.ssd_resnet34 import SSDResNet34
from solo_npu.models.yolact_edge import build_yolact_edge

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def deploy_cfg(model: str, root: Path, run_dir: Path, input_shape: list[int], backends: str = "onnxruntime",
               extra: tuple[str, ...] = ()):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("deploy", overrides=[
            f"model={model}", "data=synthetic", f"data.root={root}", "data.generate=false", "model.num_classes=3",
            f"deploy.input_shape=[{input_shape[0]},{input_shape[1]}]", "deploy.batch_sizes=[2]", "deploy.opset=11",
            f"deploy.backends=[{backends}]", "deploy.slim=false", "deploy.num_images=4",
            "stages=[export,preprocess,infer,evaluate]", f"run_dir={run_dir}", *extra])


def run(model_name: str, model: nn.Module, root: Path, run_dir: Path, input_shape: list[int],
        backend: str = "onnxruntime", **kw) -> dict:
    cfg = deploy_cfg(model_name, root, run_dir, input_shape, **kw)
    ctx = DeployContext(cfg, run_dir, model_name)
    ctx.set_model(model)
    run_pipeline(cfg, model_name, ctx)
    metrics = ctx.results["evaluate"][f"{backend}_b2"]["metrics"]
    results = json.loads((run_dir / "evaluate" / f"{backend}_b2.json").read_text())
    return {"metrics": metrics, "results": results, "run_dir": run_dir}


def check_coco_results(out: dict, iou_types: tuple[str, ...], root: Path) -> None:
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    cat_ids = {c["id"] for c in ann["categories"]}
    image_ids = {im["id"] for im in ann["images"]}
    assert set(out["metrics"]) == set(iou_types)
    for metrics in out["metrics"].values():
        assert 0.0 <= metrics["AP"] <= 1.0 and not math.isnan(metrics["AP"])
    assert len(out["results"]) > 0
    for det in out["results"]:
        assert det["category_id"] in cat_ids and det["image_id"] in image_ids
        assert len(det["bbox"]) == 4 and det["bbox"][2] >= 0 and det["bbox"][3] >= 0
        if "segm" in iou_types:
            assert "counts" in det["segmentation"]


def test_fcos_pipeline(synthetic_coco: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_fcos(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=1, num_groups=4,
                       nms_pre=50)
    with torch.no_grad():
        model.bbox_head.conv_cls.bias.fill_(0.0)  # random weights that still clear score_thr
    check_coco_results(run("fcos", model, synthetic_coco, tmp_path, [128, 160]), ("bbox",), synthetic_coco)


def test_yolact_edge_pipeline(synthetic_coco: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_yolact_edge(num_classes=3, depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=128,
                              top_k=20, max_num_detections=10)
    out = run("yolact_edge", model, synthetic_coco, tmp_path, [128, 128])
    check_coco_results(out, ("segm", "bbox"), synthetic_coco)


def same_detections(a: list[dict], b: list[dict]) -> None:
    """Equal COCO results: the same detections in the same order, scores within float32 noise."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"], x["bbox"]) == (y["image_id"], y["category_id"], y["bbox"])
        assert abs(x["score"] - y["score"]) <= 1e-5
        assert x["segmentation"]["counts"] == y["segmentation"]["counts"]


def test_yolact_edge_pipeline_backends_and_export_modes_agree(synthetic_coco: Path, tmp_path: Path) -> None:
    """Every backend, in the detections and the features (ModelZoo guide) export modes, gives the same results."""
    torch.manual_seed(0)
    kw = dict(num_classes=3, depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=128, top_k=20,
              max_num_detections=10)
    det_model = build_yolact_edge(**kw)
    feat_model = build_yolact_edge(**kw, export_mode="features")
    feat_model.load_state_dict(det_model.state_dict())
    results = {}
    for mode, model in (("detections", det_model), ("features", feat_model)):
        out = run("yolact_edge", model, synthetic_coco, tmp_path / mode, [128, 128],
                  backends="pytorch,torchscript,onnxruntime", extra=(f"model.export_mode={mode}",))
        for backend in ("pytorch", "torchscript", "onnxruntime"):
            results[mode, backend] = json.loads((out["run_dir"] / "evaluate" / f"{backend}_b2.json").read_text())
    reference = results["detections", "pytorch"]
    for dets in results.values():
        same_detections(dets, reference)


def test_ssd_resnet34_pipeline(synthetic_coco: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    model = SSDResNet34(trunk, (16, 16, 16, 8, 8, 8), (8, 8, 8, 8, 8), num_classes=3, fig_size=320, max_output=20)
    check_coco_results(run("ssd_resnet34", model, synthetic_coco, tmp_path, [320, 320]), ("bbox",), synthetic_coco)


@pytest.mark.parametrize(("model", "images"), [("ssd_resnet34", "annotated"), ("yolact_edge", "annotated"),
                                              ("solov2", "all"), ("fcos", "all")])
def test_each_model_scores_the_images_its_reference_scores(model: str, images: str) -> None:
    """MLPerf's SSD and its guide's ssd_preprocess.py, and YolactEdge's COCODetection (``self.ids =
    list(self.coco.imgToAnns.keys())``, which its guide's postprocess.py reads), run only the val images with an
    annotation; mmdetection's CocoMetric (SOLOv2, FCOS) scores every image."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{model}.yaml")
    assert cfg.deploy.get("scored_images", "all") == images


def test_ssd_resnet34_scores_the_annotated_images_as_its_guide(synthetic_coco: Path, tmp_path: Path) -> None:
    """The SSD guide (ssd_preprocess.py) and MLPerf score only the val images with an annotation (4952 of 5000):
    an image without one would count its detections as false positives. deploy.evaluate.images=all scores all."""
    import shutil

    from solo_npu.evaluation import evaluate_coco

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    path = root / "annotations" / "instances_val2017.json"
    ann = json.loads(path.read_text())
    empty = ann["images"][0]["id"]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] != empty]
    path.write_text(json.dumps(ann))
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    model = SSDResNet34(trunk, (16, 16, 16, 8, 8, 8), (8, 8, 8, 8, 8), num_classes=3, fig_size=320, max_output=20)
    counts = {}
    for images in ("null", "all"):
        run_dir = tmp_path / images
        out = run("ssd_resnet34", model, root, run_dir, [320, 320],
                  extra=(f"deploy.evaluate.images={images}", "stages=[export,preprocess,infer,evaluate,report]"))
        entry = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["onnxruntime_b2"]
        counts[images] = entry["images"]
        scored = sorted({d["image_id"] for d in out["results"]} | {i["id"] for i in ann["images"][:4]})
        ids = [i for i in scored if images == "all" or i != empty]
        assert entry["detections"] == sum(d["image_id"] in ids for d in out["results"])  # those scored
        want = evaluate_coco(path, [d for d in out["results"] if d["image_id"] in ids], ("bbox",), img_ids=ids)
        assert entry["metrics"]["bbox"] == want["bbox"]
        assert any(d["image_id"] == empty for d in out["results"])  # it has detections, which would count
    assert counts == {"null": 3, "all": 4}
    assert "over 3 of the 4 images, those with an annotation" in (tmp_path / "null" / "report.md").read_text()
    assert "over 4 images" in (tmp_path / "all" / "report.md").read_text()
