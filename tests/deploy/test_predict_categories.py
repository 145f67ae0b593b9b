"""``deploy.py task=predict``: the category ids of ``predictions.json`` are the dataset's when its annotation
file is configured, COCO's (1..90 with gaps) for the 80 COCO classes, and ``label + 1`` with a WARNING only
for other classes without an annotation file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from deploy_support import ROOT, compose_deploy_cfg
from omegaconf import OmegaConf

from solo_npu.data import CocoInstanceDataset
from solo_npu.deploy.predict import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, run_predict
from solo_npu.models import build_model


def one_class_model(num_classes: int, label: int) -> torch.nn.Module:
    """solov2_tiny with ``num_classes`` classes of which only ``label`` ever scores above the threshold."""
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(ROOT / "conf" / "model" / "solov2_tiny.yaml"), num_classes=num_classes)
    with torch.no_grad():
        model.mask_head.conv_cls.bias.fill_(-20.0)
        model.mask_head.conv_cls.bias[label] = 8.0
    return model.eval()


def write_image(folder: Path, name: str = "img.jpg", shape: tuple[int, int] = (96, 128)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / name), rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    return folder / name


def predict_cfg(tmp_path: Path, checkpoint: Path | None, images: Path, data_root: Path, *extra: str):
    overrides = ["task=predict", "model=solov2_tiny", f"input={images}", f"output={tmp_path / 'pred'}",
                 f"data.root={data_root}", "data.generate=false", "data.img_scale=[128,96]", "runtime.device=cpu",
                 *extra]
    if checkpoint is not None:
        overrides.append(f"checkpoint={checkpoint}")
    return compose_deploy_cfg(overrides)


def category_ids(out: dict) -> set[int]:
    entries = json.loads(Path(out["predictions"]).read_text())
    assert entries, "the model predicted nothing"
    return {e["category_id"] for e in entries}


def test_80_class_model_writes_coco_category_ids(tmp_path, caplog):
    # label 79 is COCO's toothbrush, category id 90 (label + 1 would be 80, COCO's toaster).
    model = one_class_model(80, 79)
    image = write_image(tmp_path / "in")
    data = OmegaConf.load(ROOT / "conf" / "data" / "coco.yaml")
    data.img_scale = [128, 96]
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(model, image, tmp_path / "direct", None, data, "cpu", 0.3)
    assert category_ids(out) == {90}
    assert "taken to be COCO's" in caplog.text  # no names: an assumption, said once

    # deploy.py task=predict with an mmdet-style checkpoint that names its classes (mmdet 1.x spelling), and
    # no annotation file: COCO ids, the checkpoint's names on the json and the overlays.
    names = [n.replace(" ", "_") for n in COCO_CLASS_NAMES]
    ckpt = tmp_path / "coco80.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": names}}, ckpt)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(predict_cfg(tmp_path, ckpt, image, tmp_path / "no_data"))
    entries = json.loads(Path(out["predictions"]).read_text())
    assert {e["category_id"] for e in entries} == {90}
    assert {e["category_name"] for e in entries} == {"toothbrush"}
    assert "label + 1" not in caplog.text and "taken to be" not in caplog.text
    assert (tmp_path / "pred" / "img.png").is_file()


def test_80_coco_classes_in_another_order_map_by_name():
    from solo_npu.deploy.predict import default_category_ids

    names = list(reversed(COCO_CLASS_NAMES))
    assert default_category_ids(80, names) == list(reversed(COCO_CATEGORY_IDS))


def write_coco(root: Path, categories: list[dict]) -> Path:
    """A COCO-layout folder (val2017/ and annotations/instances_val2017.json) with one annotated image."""
    write_image(root / "val2017", "a.jpg")
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 96, "width": 128}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": categories[0]["id"], "iscrowd": 0, "area": 400,
                            "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}],
           "categories": categories}
    (root / "annotations").mkdir(parents=True)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(ann))
    return path


def test_annotation_file_gives_the_dataset_category_ids(tmp_path, caplog):
    root = tmp_path / "data"
    ann_file = write_coco(root, [{"id": 5, "name": "circle"}, {"id": 17, "name": "rectangle"},
                                 {"id": 42, "name": "triangle"}])
    dataset = CocoInstanceDataset(ann_file, root / "val2017", train=False, with_masks=False)
    ckpt = tmp_path / "three.pth"
    torch.save({"state_dict": one_class_model(3, 2).state_dict()}, ckpt)
    image = write_image(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(predict_cfg(tmp_path, ckpt, image, root))
    assert category_ids(out) == {dataset.label_to_cat[2]} == {42}  # the map evaluation uses
    assert "label + 1" not in caplog.text

    # Only the annotation file, its categories listed out of id order (the images of the split are not needed to
    # predict on other photos): the same ids, with the labels in ascending id order as evaluation numbers them.
    ann = json.loads(ann_file.read_text())
    ann["categories"] = ann["categories"][::-1]
    ann_file.write_text(json.dumps(ann))
    for image_file in (root / "val2017").iterdir():
        image_file.unlink()
    (root / "val2017").rmdir()
    out = run_predict(predict_cfg(tmp_path, ckpt, image, root, f"output={tmp_path / 'pred_annotations_only'}"))
    assert category_ids(out) == {42}
    assert "label + 1" not in caplog.text

    # An annotation file whose class count is not the model's is not used: label + 1, with a WARNING.
    other = tmp_path / "other"
    write_coco(other, [{"id": 5, "name": "circle"}, {"id": 17, "name": "rectangle"}])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(predict_cfg(tmp_path, ckpt, image, other))
    assert category_ids(out) == {3}
    assert "category_id in predictions.json is label + 1" in caplog.text


@pytest.mark.parametrize("names", [None, ["circle", "rectangle", "triangle"]])
def test_other_classes_without_annotation_file_are_label_plus_one_with_a_warning(tmp_path, caplog, names):
    image = write_image(tmp_path / "in")
    data = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(one_class_model(3, 2), image, tmp_path / "out", names, data, "cpu", 0.3)
    assert category_ids(out) == {3}
    assert "category_id in predictions.json is label + 1" in caplog.text


@pytest.mark.parametrize("dataset_meta", [{"classes": ("triangle", "circle", "rectangle")},
                                          {"CLASSES": ("triangle", "circle", "rectangle")}],  # mmdet 3.0.0rc
                         ids=["mmdet3", "mmdet3rc"])
def test_checkpoint_classes_name_the_predictions(tmp_path, caplog, dataset_meta):
    """An mmdet 3.x file whose classes are the dataset's in another order: its label 0 is a triangle, so every
    prediction of that channel is the dataset's triangle (id 7), not the data config's first name."""
    root = tmp_path / "data"
    write_coco(root, [{"id": 1, "name": "circle"}, {"id": 3, "name": "rectangle"}, {"id": 7, "name": "triangle"}])
    ckpt = tmp_path / "mmdet3.pth"
    torch.save({"state_dict": one_class_model(3, 0).state_dict(), "meta": {"dataset_meta": dataset_meta}}, ckpt)
    image = write_image(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(predict_cfg(tmp_path, ckpt, image, root))  # data.class_names: circle, rectangle, triangle
    entries = json.loads(Path(out["predictions"]).read_text())
    assert entries and {(e["category_id"], e["category_name"]) for e in entries} == {(7, "triangle")}
    assert "are not the checkpoint's classes (triangle, circle, rectangle" in caplog.text


def test_overlays_of_same_stem_images_do_not_replace_each_other_or_the_inputs(tmp_path, capsys):
    """x.png and x.jpg in one folder give two overlays; output= the input folder would overwrite y.png with its
    overlay, so it is refused in one line before anything is written."""
    from solo_npu.deploy.pipeline import main

    folder = tmp_path / "photos"
    write_image(folder, "x.png", (96, 128))
    write_image(folder, "x.jpg", (80, 112))
    single = write_image(folder, "y.png", (64, 96))
    before = single.read_bytes()
    out = run_predict(predict_cfg(tmp_path, None, folder, tmp_path / "no_data"))
    assert out["images"] == 3
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["x_jpg.png", "x_png.png", "y.png"]
    code = main(predict_cfg(tmp_path, None, folder, tmp_path / "no_data", f"output={folder}"))
    assert code == 1 and single.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["x.jpg", "x.png", "y.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"output={folder} would overwrite the input image y.png with its overlay: choose another "
                            "output folder")
