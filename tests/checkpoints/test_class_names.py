"""Class names of a checkpoint against the dataset's: the same names in another order reorder the
classifier by name (WARNING), other names are a WARNING; evaluation and fine-tuning jobs pass theirs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError
from solo_npu.checkpoints.convert import load_model_weights
from solo_npu.config import register_configs
from solo_npu.engine import job
from solo_npu.engine.finetune import load_weights
from solo_npu.models import build_model
from solo_npu.runtime import DeviceInfo

CONF = Path(__file__).resolve().parents[2] / "conf"
DATASET = ["circle", "rectangle", "triangle"]  # the synthetic dataset's names (categories 1, 3, 7)
CLS = ("mask_head.conv_cls.weight", "mask_head.conv_cls.bias")


def tiny(seed: int, num_classes: int = 3):
    torch.manual_seed(seed)
    return build_model(OmegaConf.load(CONF / "model" / "solov2_tiny.yaml"), num_classes=num_classes).eval()


def name_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "class" in r.getMessage()]


@pytest.mark.parametrize("meta", ["mmdet3", "mmdet2", "ours"])
def test_same_names_in_another_order_reorder_the_classifier(tmp_path, caplog, meta):
    src = tiny(0)
    names = ["triangle", "circle", "rectangle"]  # label k of the dataset is the checkpoint's channel order[k]
    order = [1, 2, 0]
    ckpt = {"mmdet3": {"state_dict": src.state_dict(), "meta": {"dataset_meta": {"classes": names}}},
            "mmdet2": {"state_dict": src.state_dict(), "meta": {"CLASSES": tuple(names)}},
            "ours": {"model": src.state_dict(), "config": {"data": {"class_names": names}}}}[meta]
    torch.save(ckpt, tmp_path / "ckpt.pth")
    dst = tiny(1)
    with caplog.at_level(logging.INFO):
        report = load_weights(dst, str(tmp_path / "ckpt.pth"), class_names=DATASET)
    assert sorted(report["reordered"]) == sorted(CLS)
    for key in CLS:
        assert torch.equal(dst.state_dict()[key], src.state_dict()[key][order])
    [line] = name_warnings(caplog)
    assert "another order" in line and "reordered by name" in line and "label 0 'circle' <- channel 1" in line
    # mmdet numbers the classes in its training file's category order (get_cat_ids), so names it stored in another
    # order may not be the channels' names: the WARNING says when the reordering is right; this project's names are
    assert ("training annotation file listed them" in line) is (meta != "ours")
    assert ("--class-names circle,rectangle,triangle" in line) is (meta != "ours")  # the way to take them as they are
    # The model scores label k with the checkpoint's channel for the same name.
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(src.forward_head(images)[0], dst.forward_head(images)[0]):
            torch.testing.assert_close(a[:, order], b)


def test_other_names_warn_and_same_names_are_silent(tmp_path, caplog):
    src = tiny(0)
    torch.save({"state_dict": src.state_dict(), "meta": {"CLASSES": ("circle", "rectangle", "hexagon")}},
               tmp_path / "other.pth")
    dst = tiny(1)
    with caplog.at_level(logging.INFO):
        report = load_model_weights(dst, tmp_path / "other.pth", class_names=DATASET)
    assert report["reordered"] == []
    assert torch.equal(dst.state_dict()[CLS[0]], src.state_dict()[CLS[0]])  # used as it is
    [line] = name_warnings(caplog)
    assert "other classes than the dataset's" in line and "1 of 3 names differ" in line
    assert "label 2: 'hexagon' in the checkpoint, 'triangle' in the dataset" in line

    # mmdet 1.x / SOLO spell COCO's names with underscores: the same names.
    caplog.clear()
    torch.save({"state_dict": src.state_dict(), "meta": {"CLASSES": ("person", "traffic_light", "Car")}},
               tmp_path / "coco.pth")
    with caplog.at_level(logging.INFO):
        report = load_model_weights(dst, tmp_path / "coco.pth", class_names=["person", "traffic light", "car"])
    assert report["reordered"] == [] and name_warnings(caplog) == []
    # Without the dataset's names (deployment) nothing is compared.
    torch.save({"state_dict": src.state_dict(), "meta": {"CLASSES": ("triangle", "circle", "rectangle")}},
               tmp_path / "perm.pth")
    assert load_model_weights(dst, tmp_path / "perm.pth")["reordered"] == []
    assert torch.equal(dst.state_dict()[CLS[0]], src.state_dict()[CLS[0]])
    # Another class count: the class-count check decides (names not compared).
    with pytest.raises(CheckpointError, match="classifier for 3 classes but the model has 2"):
        load_model_weights(tiny(1, 2), tmp_path / "perm.pth", class_names=DATASET[:2])


def _cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_eval_and_finetune_jobs_pass_the_dataset_names(tmp_path, caplog, monkeypatch):
    src = tiny(0)
    names, order = ["triangle", "circle", "rectangle"], [1, 2, 0]
    torch.save({"state_dict": src.state_dict(), "meta": {"dataset_meta": {"classes": names}}}, tmp_path / "mmdet.pth")
    expected = src.state_dict()[CLS[0]][order]
    data = [f"data.root={tmp_path / 'synthetic'}", "data.num_train=2", "data.num_val=2", "data.size=64",
            f"checkpoint={tmp_path / 'mmdet.pth'}"]
    info = DeviceInfo("cpu", torch.device("cpu"))
    evaluated = []
    monkeypatch.setattr(job, "evaluate", lambda model, *args: evaluated.append(model) or {})
    (tmp_path / "eval").mkdir()
    with caplog.at_level(logging.INFO):
        job.eval_only(_cfg("+experiment=[smoke,eval]", *data), tmp_path / "eval", info)
    assert torch.equal(evaluated[0].mask_head.conv_cls.weight, expected)
    assert any("reordered by name" in line for line in name_warnings(caplog))

    caplog.clear()
    cfg = _cfg("+experiment=[smoke,finetune]", *data)
    with caplog.at_level(logging.INFO):
        model, _, _ = job._build_model_and_optimizer(cfg, info, 3, None, DATASET)
    assert torch.equal(model.mask_head.conv_cls.weight.detach(), expected)
    assert any("reordered by name" in line for line in name_warnings(caplog))


def test_coco_categories_listed_out_of_id_order_warn_once(tmp_path, caplog):
    from solo_npu.data.coco import CocoInstanceDataset

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.full((32, 48, 3), 200, np.uint8))
    polygon = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]
    for listed in ([90, 1, 44], [1, 44, 90]):
        coco = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 48}],
                "categories": [{"id": c, "name": f"class{c}"} for c in listed],
                "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "segmentation": polygon,
                                 "bbox": [4, 4, 16, 16], "area": 256.0, "iscrowd": 0} for i, c in enumerate(listed)]}
        (tmp_path / "ann.json").write_text(json.dumps(coco))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
            dataset = CocoInstanceDataset(tmp_path / "ann.json", tmp_path / "img", train=False)
        assert dataset.label_to_cat == [1, 44, 90]  # the label order stays: category ids ascending
        assert dataset.class_names == ["class1", "class44", "class90"]
        order = [r.getMessage() for r in caplog.records if "another order than their ids" in r.getMessage()]
        if listed == [90, 1, 44]:
            assert len(order) == 1 and "(ids 90, 1, 44)" in order[0] and "label 0 = id 1 'class1'" in order[0]
        else:
            assert order == []
