"""load_model_weights reads detector reference checkpoints through their converters, and our own as is."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from solo_npu.checkpoints import load_checkpoint, save_checkpoint
from solo_npu.checkpoints.convert import load_model_weights, main
from solo_npu.engine.finetune import checkpoint_position
from solo_npu.models.fcos import build_fcos

TINY = dict(depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2, num_groups=4, nms_pre=40)


def _fcos(seed: int):
    torch.manual_seed(seed)
    return build_fcos(**TINY).eval()


def _mmdet_v1(state):
    renames = {"conv_cls": "fcos_cls", "conv_reg": "fcos_reg", "conv_centerness": "fcos_centerness"}
    out = {}
    for k, v in state.items():
        for new, old in renames.items():
            k = k.replace(f"bbox_head.{new}.", f"bbox_head.{old}.")
        out[k] = v
    return {"meta": {"mmdet_version": "0.6.0"}, "state_dict": out}


def test_auto_reads_reference_and_own_fcos_checkpoints(tmp_path):
    src = _fcos(0)
    x = torch.randn(1, 3, 64, 96)
    expected = src.export_forward(x)
    ref = save_checkpoint(_mmdet_v1(src.state_dict()), tmp_path / "fcos_v1.pth")
    own = save_checkpoint({"model": src.state_dict()}, tmp_path / "ours.pth")
    for path, source in [(ref, "fcos"), (own, "ours")]:
        dst = _fcos(1)
        report = load_model_weights(dst, path, source="auto")
        assert report["source"] == source and not report["missing"] and not report["unexpected"]
        for a, b in zip(expected, dst.export_forward(x)):
            torch.testing.assert_close(a, b)


def test_cli_converts_detector_checkpoint(tmp_path, capsys):
    src = _fcos(0)
    ref = save_checkpoint(_mmdet_v1(src.state_dict()), tmp_path / "fcos_v1.pth")
    # The model reads its reference layout: without its config the CLI (SOLOv2 layouts) refuses, naming it.
    assert main([str(ref), str(tmp_path / "clean.pth"), "--from", "fcos"]) == 1
    assert "SOLOv2 does not read 'fcos' checkpoints" in capsys.readouterr().out
    config = tmp_path / "fcos_tiny.yaml"
    OmegaConf.save(OmegaConf.create({"_target_": "solo_npu.models.fcos.build_fcos", "num_classes": 80, **TINY}), config)
    assert main([str(ref), str(tmp_path / "clean.pth"), "--from", "fcos", "--model-config", str(config)]) == 0
    dst = _fcos(1)
    # mmcv's runners save meta=dict(epoch=self.epoch + 1, iter=self.iter): the converted file keeps it
    ckpt = _mmdet_v1(src.state_dict())
    ckpt["meta"].update(epoch=12, iter=87960)
    save_checkpoint(ckpt, tmp_path / "fcos_v1_trained.pth")
    assert main([str(tmp_path / "fcos_v1_trained.pth"), str(tmp_path / "trained.pth"), "--from", "fcos",
                 "--model-config", str(config)]) == 0
    position = checkpoint_position(load_checkpoint(tmp_path / "trained.pth"))
    assert position["epoch"] == 12
    assert position["iteration"] == 87960
    report = load_model_weights(dst, tmp_path / "clean.pth")
    assert report["source"] == "ours" and not report["missing"]
    torch.testing.assert_close(dst.state_dict()["bbox_head.conv_centerness.weight"],
                               src.state_dict()["bbox_head.conv_centerness.weight"])
