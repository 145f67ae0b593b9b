"""The NPU experiments give every batch one shape (the Ascend ModelZoo SOLOV2 for PyTorch training port pads
every image to 1344x1344 and the ground truth to a fixed count), so NPU operators never recompile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solo_npu.config import register_configs
from solo_npu.data import build_dataloader, build_dataset
from solo_npu.engine.trainer import move_batch

CONF = Path(__file__).resolve().parents[2] / "conf"
# (experiments, canvas side at the recipe's scale): 1333x800 -> 1344 as the ModelZoo port; light 768x448 -> 768
NPU_RUNS = [("1p", 1344), ("8p", 1344), ("performance_1p", 1344), ("performance_8p", 1344),
            ("[8p,solov2_r50_3x]", 1344), ("[8p,solov2_light_r50_3x]", 768), ("[solov2_light_r18_3x,1p]", 768)]


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("experiment, side", NPU_RUNS)
def test_npu_experiments_pad_to_one_square_canvas(experiment: str, side: int) -> None:
    cfg = _compose([f"+experiment={experiment}"])
    assert cfg.data.pad.mode == "fixed" and list(cfg.data.pad.canvas) == [side, side]
    assert cfg.data.instance_slots == "fixed" and cfg.model.head.pos_slots == 512  # one loss shape every step


@pytest.mark.parametrize("experiment", [e for e, _ in NPU_RUNS])
def test_every_training_batch_of_an_npu_experiment_has_one_shape(experiment: str, synthetic_coco: Path) -> None:
    # The session's 128-px images, portrait and landscape, at a scaled-down img_scale (the canvas follows
    # it); multi-scale training draws short sides up to the long one.
    cfg = _compose([f"+experiment={experiment}", f"data.root={synthetic_coco}", "data.img_scale=[150,96]",
                    "data.max_instances=8", "data.slot_ladder=[1,2,4]", "data.num_workers=0"])
    data = cfg.data
    assert data.pad.mode == "fixed" and list(data.pad.canvas) == [160, 160]  # 150 up to a multiple of 32
    if data.multiscale_short:
        OmegaConf.update(data, "multiscale_short", [64, 96, 150], merge=False)
    train_set = build_dataset(data, "train", seed=0)
    assert len(set(train_set.aspect_flags.tolist())) == 2  # both orientations are present
    batch_size = int(cfg.train.batch_size)
    loader = build_dataloader(data, "train", batch_size=batch_size, seed=0, dataset=train_set)
    shapes, carried = set(), set()
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            carried.add(batch["gt_masks"].shape[1])
            batch = move_batch(batch, torch.device("cpu"))  # what the trainer does before the forward
            shapes.add(tuple((k, tuple(batch[k].shape)) for k in ("images", "gt_masks", "gt_labels", "gt_boxes",
                                                                   "gt_valid")))
    # The workers carry only the rung each batch needs; the model gets 8 slots every step.
    assert carried <= {1, 2, 4, 8} and min(carried) < 8 and len(carried) > 1
    assert shapes == {(("images", (batch_size, 3, 160, 160)), ("gt_masks", (batch_size, 8, 160, 160)),
                       ("gt_labels", (batch_size, 8)), ("gt_boxes", (batch_size, 8, 4)),
                       ("gt_valid", (batch_size, 8)))}
    val_shapes = {tuple(b["images"].shape) for b in build_dataloader(data, "val", batch_size=1)}
    assert val_shapes == {(1, 3, 160, 160)}
