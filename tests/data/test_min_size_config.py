"""data.min_size: the shorter side under which training skips an image (mmdet's ``filter_cfg`` min_size, 32 in
open-mmlab/mmdetection configs/_base_/datasets/coco_instance.py), a setting of every data yaml, checked before
any worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solo_npu.config import register_configs
from solo_npu.config.deploy_schema import check_overrides
from solo_npu.config.schema import TrainJobConfig
from solo_npu.config.values import ConfigValueError, check_values
from solo_npu.data.build import build_dataset

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _coco_root(tmp_path: Path) -> Path:
    """A COCO-layout training split: images of 100x100, 20x24 and 40x16 px with one square each."""
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    sizes = {1: (100, 100), 2: (20, 24), 3: (40, 16)}
    images, anns = [], []
    for image_id, (h, w) in sizes.items():
        cv2.imwrite(str(root / "train2017" / f"{image_id}.png"), np.zeros((h, w, 3), np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        anns.append({"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 64.0,
                     "bbox": [2, 2, 8, 8], "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]})
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return root


@pytest.mark.parametrize("data", ["coco", "synthetic"])
def test_every_data_yaml_sets_mmdets_min_size(data):
    assert _compose(f"data={data}").data.min_size == 32


@pytest.mark.parametrize("override, kept", [(None, [1]), ("data.min_size=20", [1, 2]), ("data.min_size=0", [1, 2, 3])])
def test_min_size_reaches_the_training_filter(tmp_path, override, kept):
    cfg = _compose("data=coco", f"data.root={_coco_root(tmp_path)}", *([override] if override else []))
    check_values(OmegaConf.to_container(cfg, resolve=True))
    dataset = build_dataset(cfg.data, "train")
    assert dataset.image_ids == kept
    assert dataset.fault_counts()["small_image"] == 3 - len(kept)


def test_min_size_is_checked_in_one_line():
    cfg = OmegaConf.to_container(_compose("+experiment=smoke", "data.min_size=-1"), resolve=True)
    with pytest.raises(ConfigValueError) as info:
        check_values(cfg)
    assert str(info.value) == "data.min_size=-1: must be >= 0"
    why = check_overrides(["data.min_size=1.5"], TrainJobConfig, CONF)
    assert why is not None and "\n" not in why and "data.min_size" in why and "integer" in why, why
