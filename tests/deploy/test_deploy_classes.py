"""Deploy's evaluation scores a checkpoint's classes as the dataset's categories of the same names, whatever ids
or order the annotation file gives them, and its eager reference scores an unusable image as the backends do
(no predictions), not the blank stand-in that preprocessing wrote for it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from deploy_support import base_overrides, compose_deploy_cfg
from torch import nn

from solo_npu.deploy.context import DeployContext, DeployError
from solo_npu.deploy.evaluate import evaluate_eager
from solo_npu.deploy.preprocess import build_deploy_dataset, load_index, run_preprocess

CHECKPOINT_CLASSES = ["triangle", "circle", "rectangle"]  # the checkpoint's label order


@pytest.fixture()
def renumbered(synthetic_coco: Path, tmp_path: Path) -> Path:
    """The shared synthetic set with its val file's categories given other ids, listed in reverse."""
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    path = root / "annotations" / "instances_val2017.json"
    ann = json.loads(path.read_text())
    new_ids = {c["id"]: 40 - c["id"] for c in ann["categories"]}
    ann["categories"] = [{**c, "id": new_ids[c["id"]]} for c in ann["categories"]][::-1]
    for a in ann["annotations"]:
        a["category_id"] = new_ids[a["category_id"]]
    path.write_text(json.dumps(ann))
    return root


def mmdet_checkpoint(model: nn.Module, path: Path, classes: list[str]) -> Path:
    """An mmdet 2.x-style file: the weights under ``state_dict``, the class names under ``meta.CLASSES``."""
    torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": classes}}, path)
    return path


def test_deploy_scores_the_checkpoint_classes_by_name(renumbered: Path, fitted_tiny: nn.Module,
                                                      tmp_path: Path) -> None:
    ckpt = mmdet_checkpoint(fitted_tiny, tmp_path / "solov2.pth", CHECKPOINT_CLASSES)
    ctx = DeployContext(compose_deploy_cfg([*base_overrides(renumbered), f"checkpoint={ckpt}"]), tmp_path / "run",
                        "solov2_tiny")
    dataset, _ = build_deploy_dataset(ctx)
    assert [dataset.coco.cats[c]["name"] for c in dataset.label_to_cat] == CHECKPOINT_CLASSES

    # A class the dataset does not have: one line before anything is preprocessed.
    other = mmdet_checkpoint(fitted_tiny, tmp_path / "other.pth", ["triangle", "circle", "hexagon"])
    ctx = DeployContext(compose_deploy_cfg([*base_overrides(renumbered), f"checkpoint={other}"]), tmp_path / "run2",
                        "solov2_tiny")
    with pytest.raises(DeployError, match="has no category named 'hexagon'.*the model's classes are not") as info:
        build_deploy_dataset(ctx)
    assert "\n" not in str(info.value)


def test_eager_reference_scores_a_missing_image_without_predictions(synthetic_coco: Path, fitted_tiny: nn.Module,
                                                                    tmp_path: Path, caplog) -> None:
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    gone = ann["images"][0]
    (root / "val2017" / gone["file_name"]).unlink()
    ctx = DeployContext(compose_deploy_cfg(base_overrides(root)), tmp_path / "run", "solov2_tiny")
    ctx.set_model(fitted_tiny)
    run_preprocess(ctx)
    index = load_index(ctx)
    assert [r["image_ok"] for r in index["images"] if r["image_id"] == gone["id"]] == [False]
    with caplog.at_level(logging.WARNING, logger="solo_npu.evaluation"):
        evaluate_eager(ctx, index)
    eager = json.loads(ctx.path("evaluate", "eager.json").read_text())
    assert eager and not [e for e in eager if e["image_id"] == gone["id"]]
    assert f"1 of the {len(index['images'])} images scored have no predictions" in caplog.text
