"""End-to-end training jobs of the tiny SOLOv2 on synthetic data, in this process (1p)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from engine_support import run_train

from solo_npu.checkpoints import load_checkpoint
from solo_npu.engine.trainer import NonFiniteLossError


@pytest.fixture(scope="module")
def trained(smoke_data: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("train_1p")
    summary = run_train([*smoke_data, "train.epochs=3", "train.eval_interval=3", "train.log_interval=3"], run_dir)
    return run_dir, summary


def _losses(run_dir: Path, name: str = "train/loss") -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == name]


def test_training_run_learns_and_writes_artefacts(trained: tuple[Path, dict]) -> None:
    run_dir, summary = trained
    assert summary["status"] == "ok" and summary["iterations"] == 27 and summary["epochs"] == 3
    losses = _losses(run_dir)
    assert len(losses) == 9
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    cls = _losses(run_dir, "train/loss_cls")  # the dice loss of a 27-step run is noisy; focal falls steadily
    assert sum(cls[-3:]) < 0.8 * sum(cls[:3]), cls
    assert summary["fps"] > 0 and math.isfinite(summary["final_loss"]) and 0.0 <= summary["segm_ap"] <= 1.0
    assert summary["ranks_in_sync"] is True
    log = (run_dir / "train.log").read_text()
    assert "FPS: " in log and "epoch [3/3]" in log and "lr: " in log and "images/s: " in log
    for name in ("config.yaml", "loss.png", "ap.png", "checkpoints/last.pth", "checkpoints/best.pth",
                 "checkpoints/epoch_3.pth"):
        assert (run_dir / name).is_file(), name
    pngs = sorted((run_dir / "predictions").glob("*.png"))
    assert len(pngs) == 2
    from PIL import Image

    with Image.open(pngs[0]) as png:  # ground truth beside the prediction, each panel at least 512 px high
        assert png.height >= 512 and png.width >= 2 * 512
    assert list((run_dir / "tensorboard").glob("events.*"))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pth")  # weights_only loading works
    assert (state["epoch"], state["inner_iter"], state["iteration"]) == (2, 9, 27)
    assert {"model", "optimizer", "scaler", "scheduler", "rng", "config"} <= set(state)
    assert state["config"]["train"]["epochs"] == 3
    # the class names in label order, read from the annotation file (the data config has none), so that
    # evaluation and fine-tuning can compare them with their dataset's
    assert state["config"]["data"]["class_names"] == ["circle", "rectangle", "triangle"]
    assert state["scheduler"]["base_lr"] == pytest.approx(0.04 * 2 / 16)


def test_eval_only_reproduces_training_ap(trained: tuple[Path, dict], smoke_data: list[str], tmp_path: Path) -> None:
    run_dir, summary = trained
    ckpt = run_dir / "checkpoints" / "last.pth"
    result = run_train([*smoke_data, f"checkpoint={ckpt}"], tmp_path, "eval")
    assert result["mode"] == "eval"
    assert result["segm_ap"] == pytest.approx(summary["segm_ap"], abs=1e-9)
    assert json.loads((tmp_path / "eval.json").read_text())["segm"]["AP"] == result["segm_ap"]


def _two_class_copy(src: Path, dst: Path) -> Path:
    """The synthetic dataset without its third category (3 -> 2 classes)."""
    for split in ("train", "val"):
        data = json.loads((src / "annotations" / f"instances_{split}2017.json").read_text())
        keep = sorted(c["id"] for c in data["categories"])[:2]
        data["categories"] = [c for c in data["categories"] if c["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
        (dst / "annotations").mkdir(parents=True, exist_ok=True)
        (dst / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
        shutil.copytree(src / f"{split}2017", dst / f"{split}2017")
    return dst


def test_finetune_three_to_two_classes(trained: tuple[Path, dict], synthetic_coco: Path, tmp_path: Path) -> None:
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.pth"
    data = _two_class_copy(synthetic_coco, tmp_path / "two")
    out = tmp_path / "run"
    summary = run_train([f"data.root={data}", "data.generate=false", f"checkpoint={ckpt}",
                         "data.num_classes=2", "data.class_names=[circle,rectangle]", "train.epochs=1",
                         "train.freeze_backbone=true", "train.eval_interval=1"], out, "finetune")
    assert summary["status"] == "ok" and summary["iterations"] > 0  # images left without objects are skipped
    source = load_checkpoint(ckpt)["model"]
    tuned = load_checkpoint(out / "checkpoints" / "last.pth")["model"]
    cls_keys = [k for k in tuned if k.endswith("conv_cls.weight")]
    assert len(cls_keys) == 1 and tuned[cls_keys[0]].shape[0] == 2 and source[cls_keys[0]].shape[0] == 3
    backbone = [k for k in tuned if k.startswith("backbone.") and tuned[k].is_floating_point()]
    assert backbone and all(torch.equal(tuned[k], source[k]) for k in backbone)  # frozen and loaded
    head = [k for k in tuned if k.startswith(("mask_head.kernel_convs", "neck.")) and k.endswith("weight")]
    assert any(not torch.equal(tuned[k], source[k]) for k in head)  # the rest was trained


def test_planted_nan_is_skipped_and_counted(smoke_data: list[str], tmp_path: Path) -> None:
    summary = run_train([*smoke_data, "train.plots=false", "train.eval_at_end=false", "train.eval_interval=0",
                         "debug.nonfinite_iters=[3]"], tmp_path)
    assert summary["status"] == "ok" and summary["nonfinite_total"] == 1 and summary["iterations"] == 9
    assert "non-finite loss at iteration 3" in (tmp_path / "train.log").read_text()


def test_a_split_smaller_than_the_total_batch_says_that_images_repeat(smoke_data: list[str], tmp_path: Path) -> None:
    summary = run_train([*smoke_data, "train.plots=false", "train.eval_at_end=false", "train.eval_interval=0",
                         "train.batch_size=20", "train.max_iters=1"], tmp_path)
    assert summary["status"] == "ok"
    assert ("the training split has 16 images, fewer than a step's total batch of 20 (train.batch_size=20 x 1 "
            "ranks): every step repeats images") in (tmp_path / "train.log").read_text()


def test_nonfinite_in_a_row_stops_with_checkpoint(smoke_data: list[str], tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="max_nonfinite=2"):
        run_train([*smoke_data, "train.plots=false", "train.max_nonfinite=2", "debug.nonfinite_iters=[2,3,4]"],
                  tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "nonfinite" and summary["nonfinite_total"] == 2
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert state["iteration"] == 3 and state["nonfinite_total"] == 2



def test_eval_ap_does_not_depend_on_the_eval_batch_size(trained: tuple[Path, dict], smoke_data: list[str],
                                                        tmp_path: Path) -> None:
    # The references evaluate one image per batch (mmdet configs/_base_/datasets/coco_instance.py
    # val_dataloader batch_size=1; SOLO tools/test_ins.py imgs_per_gpu=1). A batch of 4 must score the
    # same: on these portrait and landscape images a shared canvas would move every SOLOv2 grid cell.
    from omegaconf import OmegaConf

    from solo_npu.data import build_dataloader, build_dataset

    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.pth"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    val = build_dataset(cfg.data, "val")
    alone = {b["metas"][0]["image_id"]: b["metas"][0]["canvas"]
             for b in build_dataloader(cfg.data, "val", batch_size=1, dataset=val)}
    assert len(set(alone.values())) >= 2, alone  # the split has images of different canvases
    batched = {m["image_id"]: m["canvas"] for b in build_dataloader(cfg.data, "val", batch_size=4, dataset=val)
               for m in b["metas"]}
    assert batched == alone
    low = ["model.test.score_thr=0.02", "model.test.filter_thr=0.02"]  # many instances: a change would show
    results = {n: run_train([*smoke_data, f"checkpoint={ckpt}", f"train.eval_batch_size={n}", *low,
                             "eval_detections=detections.json"], tmp_path / f"bs{n}", "eval") for n in (1, 4)}
    # The detections themselves, not only the AP: this barely trained model's AP is near 0 (it is 0.0035 or
    # 0.0 depending on the torch build's last float bits), which a moved grid could not change.
    detections = {n: json.loads(Path(results[n]["detections"]).read_text()) for n in (1, 4)}
    assert Path(results[1]["detections"]) == tmp_path / "bs1" / "detections.json"
    assert len(detections[1]) >= 5 * len(alone), len(detections[1])  # about every image has some
    assert {d["image_id"] for d in detections[1]} == set(alone)
    # A batch of 4 runs the same convolutions on 4 images at once: scores agree to float rounding (about 1e-7),
    # and a mask pixel whose probability is that close to mask_thr can flip. A moved grid changes everything.
    from pycocotools import mask as mask_utils

    assert len(detections[4]) == len(detections[1])
    for image_id in alone:
        one = [d for d in detections[1] if d["image_id"] == image_id]
        four = [d for d in detections[4] if d["image_id"] == image_id]
        assert len(four) == len(one), image_id
        iou = mask_utils.iou([d["segmentation"] for d in four], [d["segmentation"] for d in one], [0] * len(one))
        same_class = [[d["category_id"] == e["category_id"] for e in one] for d in four]
        iou = iou * same_class  # a cell can give one mask to several classes
        for i, d in enumerate(four):  # the same class, nearly the same mask and the same score (near twins exist)
            assert any(iou[i, j] > 0.98 and d["score"] == pytest.approx(e["score"], rel=1e-5, abs=1e-6)
                       for j, e in enumerate(one)), (image_id, d["score"], iou[i].max())
    for task in ("segm", "bbox"):
        assert results[4]["results"][task] == pytest.approx(results[1]["results"][task], abs=2e-3), task
