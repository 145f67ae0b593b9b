"""The classes of a run are found in each annotation file by name: the validation split scores the training
split's classes whatever ids or order its file gives them (splits exported separately number them anew), a
category only the validation file has is not scored, ``data.class_names`` selects and orders the classes (as
mmdet's ``classes`` / ``metainfo.classes``), and checkpoints record the classes their labels are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import compose_train_cfg, run_train

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import AnnotationFileError, CocoInstanceDataset
from solo_npu.data.synthetic import generate_synthetic_coco
from solo_npu.engine.job import _build_data
from solo_npu.runtime import resolve_device

SYNTHETIC_NAMES = ["circle", "rectangle", "triangle"]  # ids 1, 3, 7 in the generated files


def renumber_val(root: Path) -> dict[str, int]:
    """Give the validation file's categories new ids, listed in another order, plus a category of its own
    ("star", one object on every image). Returns the new id of each name."""
    path = root / "annotations" / "instances_val2017.json"
    ann = json.loads(path.read_text())
    new_ids = {"triangle": 2, "circle": 5, "rectangle": 9, "star": 4}
    old_to_new = {c["id"]: new_ids[c["name"]] for c in ann["categories"]}
    ann["categories"] = [{"id": i, "name": n, "supercategory": "shape"} for n, i in new_ids.items()]
    for a in ann["annotations"]:
        a["category_id"] = old_to_new[a["category_id"]]
    next_id = max(a["id"] for a in ann["annotations"]) + 1
    for k, image in enumerate(ann["images"]):
        ann["annotations"].append({"id": next_id + k, "image_id": image["id"], "category_id": new_ids["star"],
                                   "iscrowd": 0, "area": 64.0, "bbox": [2, 2, 8, 8],
                                   "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]})
    path.write_text(json.dumps(ann))
    return new_ids


def perfect_results(val_set: CocoInstanceDataset) -> tuple[list[dict], list[dict]]:
    """The validation ground truth of the run's classes as predictions (labels: the run's), score 1."""
    metas, results = [], []
    for image_id in val_set.image_ids:
        anns = [a for a in val_set.coco.imgToAnns[image_id] if a["category_id"] in val_set.cat_to_label]
        masks = np.stack([val_set.coco.annToMask(a) for a in anns]).astype(bool)
        metas.append({"image_id": image_id})
        results.append({"masks": torch.from_numpy(masks), "scores": torch.ones(len(anns)),
                        "labels": torch.tensor([val_set.cat_to_label[a["category_id"]] for a in anns])})
    return metas, results


@pytest.fixture(scope="module")
def renumbered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("renumbered") / "coco"
    generate_synthetic_coco(root, 4, 3, size=64, seed=5)
    renumber_val(root)
    return root


def _cfg(root: Path, *extra: str):
    return compose_train_cfg(["+experiment=smoke", f"data.root={root}", "data.generate=false", *extra])


def test_validation_scores_the_training_classes_by_name(renumbered: Path) -> None:
    data = _build_data(_cfg(renumbered, "data.class_names=null"), resolve_device("cpu"))
    assert list(data.train_set.class_names) == SYNTHETIC_NAMES  # the training file's, ids ascending
    scored = [data.val_set.coco.cats[c]["name"] for c in data.evaluator.label_to_cat]
    assert scored == SYNTHETIC_NAMES  # label i is the validation category of the same name
    assert data.val_set.fault_counts()["bad_category"] == 0  # the star objects are not a fault, just not used
    # The ground truth of the three classes, predicted perfectly, scores AP 1: not an AP of mislabelled masks,
    # and not lowered by the star category, which no class of the run names.
    metas, results = perfect_results(data.val_set)
    data.evaluator.process(metas, results)
    summary = data.evaluator.evaluate()
    assert summary["segm"]["AP"] == pytest.approx(1.0)
    assert summary["bbox"]["AP"] == pytest.approx(1.0)


def test_class_names_select_and_order_the_classes(renumbered: Path) -> None:
    data = _build_data(_cfg(renumbered, "data.class_names=[triangle,Circle]"), resolve_device("cpu"))
    assert list(data.train_set.class_names) == ["triangle", "circle"]  # names as the file spells them
    assert list(data.train_set.label_to_cat) == [7, 1]
    assert [data.val_set.coco.cats[c]["name"] for c in data.evaluator.label_to_cat] == ["triangle", "circle"]
    labels = {int(a["label"]) for r in data.train_set.records for a in r["anns"]}
    assert labels <= {0, 1}
    cats = {data.train_set.coco.anns[a]["category_id"] for a in data.train_set.coco.anns}
    used = sum(1 for a in data.train_set.coco.anns.values() if a["category_id"] in (7, 1) and not a.get("iscrowd"))
    kept = sum(len(r["anns"]) for r in data.train_set.records)
    assert 3 in cats and kept == used  # rectangles are left out, every circle and triangle is kept
    with pytest.raises(AnnotationFileError, match=r"has no category named 'hexagon' .*its categories: circle"):
        _build_data(_cfg(renumbered, "data.class_names=[circle,hexagon]"), resolve_device("cpu"))


def test_checkpoint_records_the_classes_of_its_labels(tmp_path: Path, renumbered: Path) -> None:
    """A training run with data.class_names selecting two of three classes trains two classes and says so in its
    checkpoint; evaluating it on the renumbered validation file scores those two classes by name."""
    run = tmp_path / "run"
    run_train([f"data.root={renumbered}", "data.generate=false", "data.class_names=[triangle,circle]",
               "train.max_iters=1", "train.eval_interval=0", "train.eval_at_end=false"], run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert ckpt["config"]["data"]["class_names"] == ["triangle", "circle"]
    assert ckpt["config"]["data"]["num_classes"] == 2
    assert ckpt["model"]["mask_head.conv_cls.weight"].shape[0] == 2

    # Evaluated without data.class_names, on the validation file of four categories: the two classes the
    # checkpoint names are found there by name and scored (not refused as another class count).
    summary = run_train([f"data.root={renumbered}", "data.generate=false", "data.class_names=null",
                         f"checkpoint={run / 'checkpoints' / 'last.pth'}"], tmp_path / "eval", "eval")
    assert summary["mode"] == "eval" and summary["segm_ap"] is not None
    log = (tmp_path / "eval" / "train.log").read_text()
    assert "objects of the 2 categories not among the classes (star, rectangle) are not used" in log


def _image_info_copy(renumbered: Path, tmp_path: Path) -> Path:
    """A copy of the dataset whose validation file is an image-info file, as test-dev's: no annotations."""
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(renumbered, root)
    path = root / "annotations" / "instances_val2017.json"
    info = json.loads(path.read_text())
    del info["annotations"]
    path.write_text(json.dumps(info))
    return root


def test_image_info_file_evaluates_to_undefined_ap_with_detections_written(tmp_path: Path,
                                                                            renumbered: Path) -> None:
    """A test-dev style file (images and categories, no annotations): nothing to score against, so the AP is
    undefined (COCOeval's -1), not 0, and no image is a data fault; the detections are written for a server."""
    root = _image_info_copy(renumbered, tmp_path)
    train = tmp_path / "train"
    run_train([f"data.root={root}", "data.generate=false", "train.max_iters=1", "train.eval_interval=0",
               "train.eval_at_end=false"], train)
    summary = run_train([f"data.root={root}", "data.generate=false", f"checkpoint={train / 'checkpoints' / 'last.pth'}",
                         "eval_detections=dets.json"], tmp_path / "eval", "eval")
    assert summary["segm_ap"] is None and summary["bbox_ap"] is None
    assert summary["data_faults"]["val"].get("empty_image", 0) == 0
    assert Path(summary["detections"]).is_file()
    log = (tmp_path / "eval" / "train.log").read_text()
    assert "has no annotations (an image-info file, as test-dev's): AP is undefined" in log
    assert "segm AP undefined, bbox AP undefined" in log


def test_training_refuses_to_score_an_image_info_file(tmp_path: Path, renumbered: Path) -> None:
    """A training run whose validation file has no annotations (test-dev as data.val) stops with one line
    before training, instead of reporting AP 0.0 at every evaluation and choosing best.pth on it; with its
    evaluations off it trains."""
    root = _image_info_copy(renumbered, tmp_path)
    common = [f"data.root={root}", "data.generate=false", "train.max_iters=1"]
    refused = "has no annotations .* train.eval_interval=0 train.eval_at_end=false"
    with pytest.raises(AnnotationFileError, match=refused):
        run_train([*common, "train.eval_interval=0"], tmp_path / "train")
    assert not (tmp_path / "train" / "checkpoints").exists()
    summary = run_train([*common, "train.eval_interval=0", "train.eval_at_end=false"], tmp_path / "train2")
    assert summary["status"] == "ok"
