"""The checkpoint decides the deployed classes: an 80-class SOLOv2 checkpoint deploys 80 classes with
the default (3-class synthetic) data config, its classifier exported bit for bit; an explicit class
count that disagrees is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from onnx import numpy_helper

from solo_npu.deploy.pipeline import main, mark_explicit_classes
from solo_npu.models import build_model

ROOT = Path(__file__).resolve().parents[2]
# The R50 SOLOv2 config shrunk to ResNet-18 at 1/4 width and a narrow head, so that building and
# exporting take seconds; the layout of the state dict (key names) is the R50 model's.
TINY = ["model=solov2", "model.pretrained=null", "model.backbone.depth=18", "+model.backbone.base_channels=16",
        "model.neck.in_channels=[16,32,64,128]", "model.neck.out_channels=32", "model.head.in_channels=32",
        "model.head.feat_channels=32", "model.head.stacked_convs=1", "model.head.num_groups=8",
        "model.head.mask_feature.feat_channels=16", "model.head.mask_feature.out_channels=16",
        "model.test.nms_pre=50", "model.test.export_topk=10", "model.test.max_per_img=10",
        "deploy.input_shape=[64,96]", "deploy.batch_sizes=[1]"]
# The 80 COCO class names in the order of mmdet's CocoDataset.METAINFO['classes'] (what an mmdet 3.x
# checkpoint stores under meta.dataset_meta.classes).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
# The original SOLO repository's names (bbox_head.*, mask_feat_head.*) from mmdet's, the converter's renames inverted.
TO_SOLO = (("mask_head.cls_convs.", "bbox_head.cate_convs."), ("mask_head.kernel_convs.", "bbox_head.kernel_convs."),
           ("mask_head.conv_cls.", "bbox_head.solo_cate."), ("mask_head.conv_kernel.", "bbox_head.solo_kernel."),
           ("mask_head.mask_feature_head.convs_all_levels.", "mask_feat_head.convs_all_levels."),
           ("mask_head.mask_feature_head.conv_pred.", "mask_feat_head.conv_pred.0."))


def tiny_state(num_classes: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """The state dict of the shrunk R50 SOLOv2 with ``num_classes`` classes, classifier random (not the
    prior-probability init, so that a re-initialised classifier cannot pass for the checkpoint's)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=TINY)
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    spec.pop("deploy")
    spec["num_classes"] = num_classes
    torch.manual_seed(seed)
    state = instantiate(spec).state_dict()
    state["mask_head.conv_cls.weight"] = torch.randn_like(state["mask_head.conv_cls.weight"])
    state["mask_head.conv_cls.bias"] = torch.randn_like(state["mask_head.conv_cls.bias"])
    return state


def to_solo(key: str) -> str:
    for ours, theirs in TO_SOLO:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "deploy.py", *TINY, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def exported_classifier(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The classifier (weight, bias) inside the exported ONNX graph: the initializers of the Convs (one
    per pyramid level, all sharing them) whose weight is named after ``conv_cls``."""
    model = onnx.load(str(run_dir / "export" / "model_b1.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and "conv_cls" in n.input[1]]
    assert len(convs) == 5 and len({tuple(n.input[1:]) for n in convs}) == 1  # 5 levels, one classifier
    return inits[convs[0].input[1]], inits[convs[0].input[2]]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_80_class_mmdet_checkpoint_deploys_80_classes(tmp_path):
    state = tiny_state(80)
    ckpt = tmp_path / "solov2_mmdet.pth"
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": COCO_CLASSES}}}, ckpt)

    run_dir = tmp_path / "run"
    proc = run_cli(f"checkpoint={ckpt}", f"run_dir={run_dir}", "stages=[export]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model: 80 classes from the checkpoint (mask_head.conv_cls.weight): person, bicycle" in proc.stdout
    assert "re-initialised" not in proc.stdout + proc.stderr

    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["num_classes"] == 80 and manifest["class_names"] == list(COCO_CLASSES)
    weight, bias = exported_classifier(run_dir)
    assert np.array_equal(weight, state["mask_head.conv_cls.weight"].numpy())
    assert np.array_equal(bias, state["mask_head.conv_cls.bias"].numpy())
    traced = torch.jit.load(str(run_dir / "export" / "model_b1.ts")).state_dict()
    assert torch.equal(traced["model.mask_head.conv_cls.weight"], state["mask_head.conv_cls.weight"])

    # An explicit 3-class config (data=synthetic on the command line) with that checkpoint: one line.
    proc = run_cli(f"checkpoint={ckpt}", f"run_dir={tmp_path / 'run3'}", "stages=[export]", "data=synthetic")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {ckpt} was trained on 80 classes (mask_head.conv_cls.weight) but the config asks for 3 "
        "(data=synthetic sets data.num_classes=3)")
    # model.num_classes: the error named data.num_classes, which was not given
    proc = run_cli(f"checkpoint={ckpt}", f"run_dir={tmp_path / 'run3'}", "stages=[export]", "model.num_classes=3")
    assert proc.returncode == 1 and "but the config asks for 3 (model.num_classes=3): drop that override" in \
        proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run3" / "export").exists()


def _deploy(tmp_path: Path, ckpt: Path, *extra: str) -> tuple[int, Path]:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=[*TINY, f"checkpoint={ckpt}", f"run_dir={tmp_path / 'run'}",
                                           "stages=[export]", "deploy.export_formats=[onnx]", *extra])
    return main(cfg), tmp_path / "run"


def test_original_solo_checkpoint_channel_c_minus_1_is_class_c(tmp_path):
    # The original SOLO repository's configs say num_classes=81 and its solov2_head.py gives solo_cate
    # num_classes - 1 = 80 outputs, channel c-1 holding class c (1-based): our label c-1 is that same channel.
    state = tiny_state(80, seed=2)
    ckpt = tmp_path / "SOLOv2_solo.pth"
    torch.save({"state_dict": {to_solo(k): v for k, v in state.items()},
                "meta": {"CLASSES": COCO_CLASSES}}, ckpt)
    code, run_dir = _deploy(tmp_path, ckpt)
    assert code == 0
    weight, bias = exported_classifier(run_dir)
    assert np.array_equal(weight, state["mask_head.conv_cls.weight"].numpy())
    assert np.array_equal(bias, state["mask_head.conv_cls.bias"].numpy())
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["num_classes"] == 80 and manifest["class_names"][0] == "person"


def test_solo_classifier_with_one_output_more_than_its_names_is_an_error(tmp_path, capsys):
    # No SOLO classifier has a background channel, so 81 outputs with 80 names is not "drop channel 0"
    # (which would shift every class by one) but a file whose classifier and names disagree.
    state = tiny_state(81, seed=3)
    ckpt = tmp_path / "solo81.pth"
    torch.save({"state_dict": {to_solo(k): v for k, v in state.items()}, "meta": {"CLASSES": COCO_CLASSES}}, ckpt)
    code, run_dir = _deploy(tmp_path, ckpt)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "has 81 outputs but meta.CLASSES names 80 classes" in err
    assert f"{ckpt}: its classifier" in err  # which of the command's files it is
    assert not (run_dir / "export" / "manifest.json").exists()


def test_explicit_num_classes_mismatch_and_names_mismatch(tmp_path, capsys):
    state = tiny_state(5, seed=4)
    ckpt = tmp_path / "five.pth"
    torch.save({"model": state}, ckpt)
    code, _ = _deploy(tmp_path, ckpt, "num_classes=7")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "was trained on 5 classes (mask_head.conv_cls.weight) but the config asks for 7 (num_classes=7): drop " \
           "that override to deploy the file's 5 classes" in err
    # Names that disagree with the classifier are a one-line error too, not a guess.
    torch.save({"model": state, "meta": {"dataset_meta": {"classes": ("a", "b")}}}, ckpt)
    code, _ = _deploy(tmp_path, ckpt)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "has 5 outputs but meta.dataset_meta.classes names 2 classes" in err
    assert f"{ckpt}: its classifier" in err


def test_mark_explicit_classes_reads_command_line_overrides():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=["model=solov2", "data=coco"])
    mark_explicit_classes(cfg, ["model=solov2", "checkpoint=x.pth"])
    assert cfg.num_classes is None  # the default data (and model=) set no class count
    mark_explicit_classes(cfg, ["model=solov2", "data=coco"])
    assert cfg.num_classes == 80
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=["model=solov2", "model.num_classes=12"])
    mark_explicit_classes(cfg, ["model.num_classes=12"])
    assert cfg.num_classes == 12


def test_names_that_do_not_fit_the_classifier_give_way_to_data_class_names(tmp_path, capsys, caplog):
    """An mmdet 3.x model trained without its metainfo keeps COCO's 80 names for a classifier of its own 3
    classes (mmdetection issue #11364): refused with the fix named, then deployed with data.class_names."""
    import logging

    state = tiny_state(3, seed=5)
    ckpt = tmp_path / "three.pth"
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": COCO_CLASSES}}}, ckpt)
    code, _ = _deploy(tmp_path, ckpt, "data.class_names=null")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "has 3 outputs but meta.dataset_meta.classes names 80 classes: name its classes with " \
           "data.class_names=[...] (3 names)" in err
    with caplog.at_level(logging.WARNING, logger="solo_npu.checkpoints.convert"):
        code, run_dir = _deploy(tmp_path, ckpt, "data.class_names=[a,b,c]")
    assert code == 0
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["num_classes"] == 3 and manifest["class_names"] == ["a", "b", "c"]
    assert "its classes are named by data.class_names (a, b, c)" in caplog.text


def test_a_narrower_checkpoint_of_this_project_names_the_overrides_that_rebuild_it(tmp_path, capsys):
    """A checkpoint trained with another backbone width than the model config (as make demo's light R18 is): the
    shape mismatch is one short line that names the ++model overrides from the checkpoint's training config."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=TINY)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["backbone"]["base_channels"] = 8
    model_cfg["neck"]["in_channels"] = [8, 16, 32, 64]
    model = build_model(OmegaConf.create(model_cfg), num_classes=3)
    ckpt = tmp_path / "narrow.pth"
    torch.save({"model": model.state_dict(), "config": {"model": model_cfg}}, ckpt)
    code, _ = _deploy(tmp_path, ckpt)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and len(err) < 1500, err[:3000]
    assert "shape mismatch for" in err
    assert err.endswith("its training config built another model, add ++model.backbone.base_channels=8 "
                        "++model.neck.in_channels=[8,16,32,64]")


@pytest.mark.parametrize("case", ["imagenet_resnet", "whole_model_read_as_torchvision"])
def test_a_file_that_leaves_the_neck_and_head_random_is_refused(tmp_path, capsys, case):
    """checkpoint= is the model deployed: a torchvision ImageNet ResNet (conv1, bn1, layer1-4, fc: a backbone only,
    torchvision/models/resnet.py) would leave the neck and the heads random, as would a whole model read under the
    torchvision layout; train.py's eval and fine-tuning refuse both, and so does deploy, before exporting."""
    state = tiny_state(80, seed=3)
    if case == "imagenet_resnet":
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        backbone.update({"fc.weight": torch.randn(1000, 128), "fc.bias": torch.zeros(1000)})
        ckpt, extra = tmp_path / "resnet18-f37072fd.pth", ()
        torch.save(backbone, ckpt)
    else:
        ckpt, extra = tmp_path / "solov2.pth", ("checkpoint_source=torchvision",)
        torch.save({"state_dict": state}, ckpt)
    code, run_dir = _deploy(tmp_path, ckpt, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "holds only a ResNet under torchvision's names" in err[-1], err
    assert "checkpoint= needs a whole model" in err[-1]
    assert not (run_dir / "export").exists()
