"""checkpoint= must fill the whole model: a torchvision ImageNet ResNet (a backbone only, torchvision's
resnet.py has no neck or heads), a file of another depth, or a file converted with --allow-partial would leave
parts of the model random. The first two stop with one line (train.py too); the last loads with a WARNING that
names the source's tensors the conversion dropped when it lacks none of the model's, and stops with one line naming
those it lacks otherwise. The converter keeps this project's training config."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.checkpoints.convert import main
from solo_npu.engine.finetune import load_weights
from solo_npu.models import build_model

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "model"


def tiny(depth: int = 18, num_classes: int = 3):
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    cfg.backbone.depth = depth
    return build_model(cfg, num_classes=num_classes)


def torchvision_file(path: Path) -> Path:
    """The tiny backbone under torchvision's ResNet names, with its ImageNet classifier (``fc``), saved bare as
    torchvision's model files are."""
    state = {k: v for k, v in tiny().backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 128), torch.zeros(1000)
    torch.save(state, path)
    return path


def test_backbone_only_or_deeper_files_are_refused_in_one_line(tmp_path: Path) -> None:
    resnet = torchvision_file(tmp_path / "resnet18-5c106cde.pth")
    for allow in (False, True):  # evaluation, fine-tuning
        with pytest.raises(CheckpointError, match="holds only a ResNet under torchvision's names") as info:
            load_weights(tiny(), str(resnet), allow_classifier_change=allow)
        assert "model.pretrained=PATH" in str(info.value) and "\n" not in str(info.value)
    # A whole SOLOv2 read as torchvision's layout: nothing of it lands, refused the same way.
    whole = save_checkpoint({"state_dict": tiny().state_dict()}, tmp_path / "solov2.pth")
    with pytest.raises(CheckpointError, match="holds only a ResNet"):
        load_weights(tiny(), str(whole), source="torchvision")
    # ResNet-34 weights into a ResNet-18 model: layers the model has no place for.
    deeper = save_checkpoint({"model": tiny(depth=34).state_dict()}, tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match=r"does not match the model: 0 missing \[\], \d+ unexpected") as info:
        load_weights(tiny(), str(deeper))
    assert "pick the model= that trained it" in str(info.value) and "\n" not in str(info.value)


def test_train_py_eval_reports_a_backbone_file_in_one_line(tmp_path: Path) -> None:
    resnet = torchvision_file(tmp_path / "resnet18-5c106cde.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), "+experiment=[smoke,eval]", f"data.root={tmp_path / 'data'}",
               f"checkpoint={resnet}", f"run_dir={tmp_path / 'run'}"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("[Error] CheckpointError: ") and "holds only a ResNet" in lines[0]


def test_partial_conversion_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tiny().state_dict()
    state["mask_head.kernel_convs.0.conv.conv_offset.weight"] = torch.zeros(27, 34, 3, 3)  # a DCN tower's offsets
    src = save_checkpoint({"model": state}, tmp_path / "dcn.pth")
    dst = tmp_path / "converted.pth"
    assert main([str(src), str(dst), "--model-config", str(CONF / "solov2_tiny.yaml"), "--num-classes", "3",
                 "--allow-partial"]) == 0
    assert load_checkpoint(dst)["meta"]["partial"]["dropped"] == ["mask_head.kernel_convs.0.conv.conv_offset.weight"]
    with caplog.at_level(logging.WARNING, logger="solo_npu.checkpoints.convert"):
        load_weights(tiny(), str(dst))
    assert "was converted with --allow-partial: 1 tensors of its source were dropped" in caplog.text
    assert "conv_offset" in caplog.text


def test_converted_own_checkpoint_keeps_its_training_config(tmp_path: Path) -> None:
    config = {"data": {"normalize": {"style": "caffe", "mean": None, "std": None}, "class_names": ["a", "b", "c"]},
              "model": {"backbone": {"style": "caffe"}}}
    src = save_checkpoint({"model": tiny().state_dict(), "config": config}, tmp_path / "last.pth")
    dst = tmp_path / "converted.pth"
    assert main([str(src), str(dst)]) == 0
    assert load_checkpoint(dst)["config"] == config
    # so the input check still sees what the weights were trained on
    with pytest.raises(CheckpointError, match="trained with model.backbone.style=caffe"):
        load_weights(tiny(), str(dst), normalize={"style": "pytorch", "mean": None, "std": None})


def test_convert_reads_the_default_model_yaml_and_refuses_a_lone_num_classes(tmp_path: Path, capsys) -> None:
    """conf/model/solov2.yaml is solov2_r50.yaml through a Hydra defaults list: --model-config resolves it (the
    model it names is R50-FPN, what an R50 file fills); --num-classes alone would be ignored, so it is refused."""
    from solo_npu.checkpoints.convert import load_model_yaml

    direct, through = OmegaConf.load(CONF / "solov2_r50.yaml"), load_model_yaml(CONF / "solov2.yaml")
    assert through.backbone == direct.backbone and through.head == direct.head and through.neck == direct.neck
    assert list(through.deploy.input_shape) == [800, 1216]  # its own values over the defaults
    src = save_checkpoint({"model": tiny().state_dict()}, tmp_path / "tiny.pth")
    with pytest.raises(SystemExit) as info:
        main([str(src), str(tmp_path / "out.pth"), "--num-classes", "3"])
    assert info.value.code == 2
    assert "--num-classes sets the classes of --model-config's model" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()


def test_a_torchscript_export_given_as_checkpoint_says_what_it_is(tmp_path: Path) -> None:
    """deploy.py exports TorchScript modules next to the checkpoints; torch.load cannot read them as weights, and
    --trust-pickle would not help: the message says to pass the .pth the module was exported from."""
    module = torch.jit.script(torch.nn.Conv2d(3, 4, 1))
    path = tmp_path / "solov2_b1.ts"
    torch.jit.save(module, str(path))
    with pytest.raises(CheckpointError, match=r"is a TorchScript module .*pass the \.pth it was exported from") as info:
        load_checkpoint(path)
    assert "trust-pickle" not in str(info.value) and "\n" not in str(info.value)


def test_partial_conversion_without_the_backbone_is_refused_naming_what_it_lacks(tmp_path: Path,
                                                                                  caplog: pytest.LogCaptureFixture
                                                                                  ) -> None:
    """A source without its backbone converted with --allow-partial: fine-tuning or evaluating it would run a random
    backbone. One line says the conversion left those tensors out (not "pick the model= that trained it"), and the
    WARNING before it no longer says the model runs without them."""
    state = {k: v for k, v in tiny().state_dict().items() if not k.startswith("backbone.")}
    src = save_checkpoint({"model": state}, tmp_path / "no_backbone.pth")
    dst = tmp_path / "converted.pth"
    assert main([str(src), str(dst), "--model-config", str(CONF / "solov2_tiny.yaml"), "--num-classes", "3",
                 "--allow-partial"]) == 0
    for allow in (False, True):  # evaluation, fine-tuning
        with caplog.at_level(logging.WARNING, logger="solo_npu.checkpoints.convert"), \
                pytest.raises(CheckpointError) as info:
            load_weights(tiny(), str(dst), allow_classifier_change=allow)
        line = str(info.value)
        assert line.startswith(f"checkpoint {dst} was converted with --allow-partial and lacks ") and "\n" not in line
        assert "['backbone.conv1.weight'" in line and "pick the model=" not in line
        assert "runs without them" not in caplog.text and "of the model's were not in the file" in caplog.text
    # the same file into a deeper model: tensors the conversion did not leave out are missing too, and the file
    # has ones the model lacks: that is another model's file, said as such
    with pytest.raises(CheckpointError, match="does not match the model") as info:
        load_weights(tiny(depth=34), str(dst), allow_classifier_change=True)
    assert "converted with --allow-partial and lacks" not in str(info.value)

