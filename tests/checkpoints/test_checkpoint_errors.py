"""Every CheckpointError is one line that names the file it is about: resume= and checkpoint= files that are
weights only, truncated, or not PyTorch checkpoints at all (an ONNX model, a text file, an empty file)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from omegaconf import OmegaConf
from onnx import TensorProto, helper

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.checkpoints.convert import checkpoint_classes, main
from solo_npu.engine.checkpointer import FORMAT, Layout, agree_resume, restore_training_state, resume_plan
from solo_npu.engine.finetune import load_weights
from solo_npu.models import SOLOv2, build_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def tiny(num_classes: int = 3):
    torch.manual_seed(0)
    return build_model(OmegaConf.load(CONF / "solov2_tiny.yaml"), num_classes=num_classes)


def one_line_naming(exc: BaseException, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def weights_files(tmp_path: Path) -> dict[str, Path]:
    """Files that hold weights but no training state: what resume= cannot continue."""
    state = tiny().state_dict()
    files = {
        "state_dict": {k: v for k, v in list(state.items())[:4]},
        # what `python -m solo_npu.checkpoints.convert` writes
        "converted": {"model": state, "meta": {"source": "mmdet", "converted_from": "solov2_r50.pth"}},
        # mmdet's tools/model_converters/publish_model.py keeps meta and state_dict
        "mmdet": {"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ["a", "b", "c"]}},
                  "state_dict": state},
        # a training checkpoint of another format version
        "other_format": {"format": "solo_npu.train/0", "model": state, "epoch": 1, "iteration": 5},
    }
    return {name: save_checkpoint(obj, tmp_path / f"{name}.pth") for name, obj in files.items()}


def onnx_file(path: Path) -> Path:
    """A real ONNX model (onnx.helper), as deploy.py exports next to the checkpoints."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def broken_files(tmp_path: Path) -> dict[str, Path]:
    """Files torch.load cannot read: truncated checkpoints (zip and pre-1.6 formats) and other kinds of file."""
    good = save_checkpoint({"format": FORMAT, "model": tiny().state_dict()}, tmp_path / "good.pth")
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.zeros(64)}}, legacy, _use_new_zipfile_serialization=False)
    files = {"truncated": good.read_bytes()[: good.stat().st_size // 2],
             "truncated_legacy": legacy.read_bytes()[:-40],
             "text": b"epoch: 12\nlr: 0.01\n",
             "empty": b""}
    paths = {name: tmp_path / f"{name}.pth" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["onnx"] = onnx_file(tmp_path / "solov2.onnx")
    return paths


def test_resume_from_a_weights_only_file_names_it(tmp_path: Path) -> None:
    """resume= with weights alone stops when the file is read (before data and model are built), naming the file
    and what it holds, and says checkpoint= starts from its weights."""
    for name, path in weights_files(tmp_path).items():
        with pytest.raises(CheckpointError) as failure:
            agree_resume(str(path), tmp_path / "run")
        message = one_line_naming(failure.value, path)
        assert message.startswith("not a training checkpoint of this project: "), message
        assert f"checkpoint={path}" in message, message
        if name == "other_format":
            assert "'solo_npu.train/0'" in message and repr(FORMAT) in message, message
        elif name in ("converted", "mmdet"):
            assert "no format entry" in message and "'meta'" in message, message


def test_restore_and_resume_plan_name_the_file_they_are_given(tmp_path: Path) -> None:
    path = weights_files(tmp_path)["converted"]
    with pytest.raises(CheckpointError) as failure:
        restore_training_state(None, load_checkpoint(path), path=path)
    one_line_naming(failure.value, path)
    # A checkpoint without a recorded layout whose LR shows another total batch (16 = 8 ranks x 2).
    older = {"epoch": 2, "inner_iter": 100, "iteration": 14760, "scheduler": {"base_lr": 0.01, "warmup_iters": 500},
             "config": {"train": {"batch_size": 2}, "optim": {"base_lr": 0.01, "base_batch_size": 16,
                                                              "auto_scale_lr": True}}}
    older_path = tmp_path / "older.pth"
    with pytest.raises(CheckpointError) as failure:
        resume_plan(older, Layout(4, 2, 8, 14660), path=older_path)
    assert "total batch 16" in one_line_naming(failure.value, older_path)


@pytest.mark.parametrize("kind", ["truncated", "truncated_legacy", "text", "empty", "onnx"])
def test_unreadable_files_are_one_line_naming_the_file_and_why(tmp_path: Path, kind: str) -> None:
    """resume=, checkpoint= (evaluation, fine-tuning) and the converter: the file, and a reason (not an empty
    one, not torch's multi-line text, no advice to trust pickles for a file that is no pickle)."""
    path = broken_files(tmp_path)[kind]
    messages = []
    for read in (lambda: load_checkpoint(path), lambda: agree_resume(str(path), tmp_path / "run"),
                 lambda: load_weights(tiny(), str(path), allow_classifier_change=True)):
        with pytest.raises(CheckpointError) as failure:
            read()
        messages.append(one_line_naming(failure.value, path))
    for message in messages:
        assert message.count(str(path)) == 1, message
        reason = message.split(str(path), 1)[1]
        assert reason.strip(" :") and not message.rstrip().endswith(":"), message
        assert "trust-pickle" not in message, message
        if kind in ("text", "empty", "onnx"):
            assert f"{path} is not a PyTorch checkpoint: " in message, message
        if kind == "empty":
            assert "empty (0 bytes)" in message, message
        if kind == "truncated_legacy":
            assert "truncated" in message, message


def test_files_without_model_weights_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """checkpoint= files torch.load reads but the converters cannot: no dict, no tensors, detectron2 names."""
    files = {"list.pth": [torch.zeros(2)], "no_tensors.pth": {"epoch": 3, "meta": {}},
             "adelaidet.pth": {"model": {"ins_head.cate_pred.weight": torch.zeros(3, 8, 3, 3)}}}
    for name, obj in files.items():
        path = save_checkpoint(obj, tmp_path / name)
        with pytest.raises(CheckpointError) as failure:
            load_weights(tiny(), str(path))
        one_line_naming(failure.value, path)
        assert main([str(path), str(tmp_path / "out.pth")]) == 1
        printed = capsys.readouterr().out
        assert f"error: {path}" in printed and "\n" not in printed.strip(), printed
    assert not (tmp_path / "out.pth").exists()


def test_classifier_and_class_names_disagreeing_name_the_file(tmp_path: Path) -> None:
    state = tiny(3).state_dict()
    path = save_checkpoint({"state_dict": state, "meta": {"CLASSES": ["a", "b"]}}, tmp_path / "solo.pth")
    with pytest.raises(CheckpointError, match="has 3 outputs but meta.CLASSES names 2 classes") as failure:
        checkpoint_classes(load_checkpoint(path), SOLOv2, path=path)
    one_line_naming(failure.value, path)


def test_convert_names_a_classifier_whose_file_names_disagree(tmp_path: Path, capsys) -> None:
    """A file whose names disagree with its classifier (an mmdet 3.x model trained without its metainfo keeps COCO's
    80 names) is refused by convert, naming --class-names; with one name per output it converts and DST carries
    them. Before, convert had no such option (train.py and deploy.py take data.class_names)."""
    state = tiny(3).state_dict()
    path = save_checkpoint({"state_dict": state, "meta": {"dataset_meta": {"classes": ["a", "b"]}}},
                           tmp_path / "mmdet.pth")
    assert main([str(path), str(tmp_path / "out.pth")]) == 1
    assert "has 3 outputs but" in capsys.readouterr().out
    assert main([str(path), str(tmp_path / "out.pth"), "--class-names", "dog,cat"]) == 1
    refused = "(--class-names gives 2): name its classes with --class-names NAME,NAME,... (3 names)"
    assert refused in capsys.readouterr().out
    assert main([str(path), str(tmp_path / "out.pth"), "--class-names", "dog, cat,cow"]) == 0
    out = load_checkpoint(tmp_path / "out.pth")
    assert out["meta"]["dataset_meta"]["classes"] == ["dog", "cat", "cow"]
    assert checkpoint_classes(out, SOLOv2).names == ("dog", "cat", "cow")
    with pytest.raises(SystemExit):
        main([str(path), str(tmp_path / "x.pth"), "--class-names", "dog,,cow"])


def test_pickled_imagenet_weights_name_what_works_for_model_pretrained(tmp_path) -> None:
    """checkpoint_trust_pickle is checkpoint='s setting and does nothing for model.pretrained: the one line for a
    pickled ImageNet file says how to make it readable instead of advising that setting."""
    import argparse

    from solo_npu.models.backbones.resnet import imagenet_state

    path = tmp_path / "resnet50_pickled.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as failure:
        imagenet_state(path)
    message = str(failure.value)
    assert "weights_only=True refuses" in message and "save its state dict again" in message, message
    assert "checkpoint_trust_pickle" not in message and "\n" not in message
    with pytest.raises(CheckpointError, match="checkpoint_trust_pickle=true"):
        load_checkpoint(path)  # checkpoint= still names its setting
    assert set(imagenet_state(path, trust_pickle=True)) == {"conv1.weight"}


def test_a_checkpoint_of_another_model_says_what_else_differs(tmp_path: Path) -> None:
    """An FCOS file given to SOLOv2: the ResNet and FPN names are shared, so the error was a shape mismatch of
    three tensors that named nothing else; it now says the file holds modules the model lacks (FCOS's bbox_head)
    and lacks the model's, and what to do."""
    from solo_npu.checkpoints.convert import load_model_weights
    from solo_npu.models.fcos import build_fcos

    torch.manual_seed(0)
    fcos = build_fcos(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=1, num_groups=4)
    path = tmp_path / "fcos.pth"
    torch.save({"state_dict": fcos.state_dict()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_model_weights(tiny(), path)
    message = one_line_naming(caught.value, path)
    assert "shape mismatch for" in message
    assert "of the file's are not in the model (bbox_head." in message, message
    assert message.endswith("a checkpoint of another model or another depth, width or head (pick the model= that "
                            "trained it)")
