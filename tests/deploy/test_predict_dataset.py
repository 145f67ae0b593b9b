"""``deploy.py task=predict`` over a dataset's images: ``predictions.json`` carries the annotation file's image ids,
so pycocotools scores it (``COCO.loadRes`` + ``COCOeval``) to the AP the project's evaluation gives the same
checkpoint; and a checkpoint trained on another canvas is said, as ``train.py mode=eval`` says it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deploy_support import compose_deploy_cfg
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from solo_npu.deploy.predict import run_predict


def predict_cfg(root: Path, checkpoint: Path, images: Path, output: Path, *extra: str):
    return compose_deploy_cfg(["task=predict", "model=solov2_tiny", "data=synthetic", f"data.root={root}",
                               "data.generate=false", "data.img_scale=[160,128]", f"checkpoint={checkpoint}",
                               f"input={images}", f"output={output}", "runtime.device=cpu", "score_thr=0.05",
                               *extra])


def coco_ap(gt: COCO, entries: list[dict], iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(entries), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_predictions_score_with_pycocotools_as_the_projects_evaluation(synthetic_coco: Path, fitted_tiny: nn.Module,
                                                                      tmp_path: Path, caplog) -> None:
    from solo_npu.data import build_dataloader, build_dataset
    from solo_npu.deploy.context import load_eager_model
    from solo_npu.engine.evaluate import evaluate
    from solo_npu.evaluation import CocoEvaluator
    from solo_npu.runtime import resolve_device

    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": fitted_tiny.state_dict()}, ckpt)
    cfg = predict_cfg(synthetic_coco, ckpt, synthetic_coco / "val2017", tmp_path / "pred")
    out = run_predict(cfg)
    entries = json.loads(Path(out["predictions"]).read_text())
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    assert entries and all(e["image_id"] == by_name[e["file_name"]] for e in entries)

    model, _ = load_eager_model(cfg)  # train.py's evaluation of the same checkpoint on the same data config
    dataset = build_dataset(cfg.data, "val")
    loader = build_dataloader(cfg.data, "val", batch_size=1, num_workers=0, dataset=dataset)
    project = evaluate(model, loader, CocoEvaluator(dataset.coco, dataset.label_to_cat), resolve_device("cpu"))
    assert project["segm"]["AP"] > 0
    for iou_type in ("segm", "bbox"):
        assert coco_ap(gt, entries, iou_type) == pytest.approx(project[iou_type]["AP"], abs=1e-12)

    # An image that is not in the annotation file: an id no image of the file has, said once.
    folder = tmp_path / "mixed"
    shutil.copytree(synthetic_coco / "val2017", folder)
    cv2.imwrite(str(folder / "zz_extra.png"), np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(predict_cfg(synthetic_coco, ckpt, folder, tmp_path / "pred_mixed", "score_thr=0.0"))
    entries = json.loads(Path(out["predictions"]).read_text())
    extra = {e["image_id"] for e in entries if e["file_name"] == "zz_extra.png"}
    assert len(extra) == 1 and not extra & set(by_name.values())
    assert all(e["image_id"] == by_name[e["file_name"]] for e in entries if e["file_name"] != "zz_extra.png")
    warnings = [r.getMessage() for r in caplog.records if "not in" in r.getMessage()]
    assert len(warnings) == 1 and "1 of the 9 images" in warnings[0] and "zz_extra.png" in warnings[0]

    # None of the images in the file: ids above all of the file's too, never positions that name its own images
    # (before: 0..N-1, and ids 1..8 were the file's, whose ground truth loadRes scored them against).
    alone = tmp_path / "alone"
    alone.mkdir()
    for k in range(3):
        cv2.imwrite(str(alone / f"photo_{k}.png"), np.random.default_rng(k).integers(0, 255, (96, 128, 3), np.uint8))
    out = run_predict(predict_cfg(synthetic_coco, ckpt, alone, tmp_path / "pred_alone", "score_thr=0.0"))
    ids = {e["file_name"]: e["image_id"] for e in json.loads(Path(out["predictions"]).read_text())}
    assert sorted(ids) == ["photo_0.png", "photo_1.png", "photo_2.png"]
    assert sorted(ids.values()) == [max(by_name.values()) + 1 + k for k in range(3)], ids


def test_a_checkpoint_trained_on_another_canvas_is_said(synthetic_coco: Path, fitted_tiny: nn.Module,
                                                       tmp_path: Path, caplog) -> None:
    """The checkpoint trained on one fixed 160x160 canvas; predict pads each image to a multiple of 32."""
    ckpt = tmp_path / "fixed.pth"
    torch.save({"model": fitted_tiny.state_dict(),
                "config": {"data": {"pad": {"mode": "fixed", "canvas": [160, 160], "size_divisor": 32}}}}, ckpt)
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(next((synthetic_coco / "val2017").iterdir()), images)
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        run_predict(predict_cfg(synthetic_coco, ckpt, images, tmp_path / "pred"))
    assert "the checkpoint trained on one fixed 160x160 canvas and this prediction uses each batch padded to a " \
           "multiple of 32" in caplog.text
    assert "data.pad.mode=fixed data.pad.canvas=[160,160] predicts on it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        run_predict(predict_cfg(synthetic_coco, ckpt, images, tmp_path / "pred", "data.pad.mode=fixed",
                                "data.pad.canvas=[160,160]"))
    assert "the checkpoint trained on" not in caplog.text


def test_images_are_predicted_in_the_annotation_files_pixels(synthetic_coco: Path, fitted_tiny: nn.Module,
                                                            tmp_path: Path, caplog) -> None:
    """A JPEG tagged with EXIF orientation 6 (rotate 90) whose annotation gives its stored width and height is
    predicted on the stored pixels, as the datasets read it, so its masks have the annotation file's size; an image
    of another size than the file gives is a WARNING naming both sizes."""
    from PIL import Image

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    images = json.loads((root / "annotations" / "instances_val2017.json").read_text())["images"]
    tagged, resized = images[0], images[1]
    exif = Image.Exif()
    exif[274] = 6  # Orientation: the viewer turns the image 90 degrees clockwise
    path = root / "val2017" / tagged["file_name"]
    Image.open(path).convert("RGB").save(path, "JPEG", exif=exif, quality=95)
    assert cv2.imread(str(path)).shape[:2] == (tagged["width"], tagged["height"])  # cv2 applies the turn
    small = root / "val2017" / resized["file_name"]
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(small)), (resized["width"] // 2, resized["height"] // 2)))
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": fitted_tiny.state_dict()}, ckpt)
    with caplog.at_level(logging.INFO):  # the EXIF line is the data package's (shared with the datasets)
        out = run_predict(predict_cfg(root, ckpt, root / "val2017", tmp_path / "pred", "score_thr=0.0"))
    entries = json.loads(Path(out["predictions"]).read_text())
    sizes = {e["file_name"]: e["segmentation"]["size"] for e in entries}
    assert sizes[tagged["file_name"]] == [tagged["height"], tagged["width"]]
    assert f"{tagged['file_name']}: read without its EXIF turn" in caplog.text
    if resized["file_name"] in sizes:  # the tiny model may find nothing on the halved image
        assert sizes[resized["file_name"]] == [resized["height"] // 2, resized["width"] // 2]
    assert (f"{resized['file_name']} is {resized['width'] // 2}x{resized['height'] // 2} but the annotation file "
            f"gives {resized['width']}x{resized['height']}") in caplog.text
