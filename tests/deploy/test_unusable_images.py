"""A val image that cannot be read is scored with no predictions by every backend's evaluation, as the
eager reference (CocoEvaluator) scores it, instead of being left out of the AP."""

from __future__ import annotations

import json
import shutil

from deploy_support import CANVAS, compose_deploy_cfg
from pycocotools.coco import COCO

from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import results_path, run_infer
from solo_npu.deploy.preprocess import run_preprocess
from solo_npu.evaluation.coco_eval import evaluate_coco


def test_unreadable_image_counts_as_missed_in_backend_ap(synthetic_coco, fitted_tiny, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    ann_file = root / "annotations" / "instances_val2017.json"
    gt = COCO(str(ann_file))
    broken = next(img for img in gt.dataset["images"] if gt.getAnnIds(imgIds=[img["id"]]))
    (root / "val2017" / broken["file_name"]).write_bytes(b"not an image")
    cfg = compose_deploy_cfg([
        "model=solov2_tiny", "data=synthetic", f"data.root={root}", "data.generate=false",
        f"deploy.input_shape=[{CANVAS[0]},{CANVAS[1]}]", "deploy.batch_sizes=[1]", "deploy.backends=[onnxruntime]",
        "deploy.export_formats=[onnx]", "deploy.onnxruntime.intra_op_num_threads=1", f"run_dir={tmp_path / 'run'}"])
    ctx = DeployContext(cfg, tmp_path / "run", "solov2_tiny")
    ctx.set_model(fitted_tiny)
    for stage in (run_export, run_preprocess, run_infer):
        stage(ctx)
    summary = run_evaluate(ctx)
    key = next(k for k in summary if k != "eager")
    all_ids = sorted(img["id"] for img in gt.dataset["images"])
    assert summary[key]["images"] == len(all_ids)
    results = json.loads(results_path(ctx, key).read_text())
    assert results and broken["id"] not in {r["image_id"] for r in results}
    over_all = evaluate_coco(str(ann_file), results, ("segm",), img_ids=all_ids)["segm"]["AP"]
    without = evaluate_coco(str(ann_file), results, ("segm",),
                            img_ids=[i for i in all_ids if i != broken["id"]])["segm"]["AP"]
    assert summary[key]["metrics"]["segm"]["AP"] == over_all < without  # its objects count as missed
