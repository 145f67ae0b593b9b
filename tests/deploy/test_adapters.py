"""The generic adapter reads the model (and the yaml's anchors); the verify comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.deploy.adapters import ModelAdapter
from solo_npu.deploy.compile_310p import atc_command
from solo_npu.models import build_model, split_model_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def solov2_adapter() -> ModelAdapter:
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    return ModelAdapter(build_model(cfg, num_classes=3))


def test_adapter_reads_the_model_and_the_yaml_anchors():
    cfg = OmegaConf.load(CONF / "solov2.yaml")
    anchors = split_model_config(cfg, num_classes=80)[1]["anchors"]
    adapter = ModelAdapter(build_model(OmegaConf.load(CONF / "solov2_r50.yaml"), 80, device="meta"), anchors)
    assert adapter.output_names == ("masks", "labels", "scores") and adapter.anchors[0]["fps"] == 26.19
    assert adapter.anchors[0]["precision"] == "FP32"  # the guide compiles with torch_aie.PrecisionPolicy.FP32
    assert (adapter.iou_types, adapter.size_divisor, adapter.pad_position) == (("segm",), 32, "centre")
    assert adapter.transforms((64, 64)) is None  # SOLOv2 keeps the data config's normalisation
    adapter.model.export_exact_flag = True
    assert adapter.output_names[-1] == "exact"


def _outputs(scores, labels, masks):
    return {"scores": np.asarray([scores], np.float32), "labels": np.asarray([labels], np.int32),
            "masks": np.asarray([masks], np.float32)}


def test_solov2_compare_checks_valid_slots_only():
    masks = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    ref = _outputs([0.9, 0.5, 0.0], [1, 2, 0], masks)
    other = masks.copy()
    other[0] += 3e-4  # valid slot: counts
    other[2] = 1 - other[2]  # padding slot (score 0): arbitrary, ignored
    stats = solov2_adapter().compare(ref, _outputs([0.9, 0.5001, 0.0], [1, 2, 2], other))
    assert stats["masks_max_abs"] == pytest.approx(3e-4, rel=1e-3)
    assert stats["scores_max_abs"] == pytest.approx(1e-4, rel=1e-2)
    assert (stats["labels_mismatch"], stats["valid"]) == (0, 2)
    stats = solov2_adapter().compare(ref, _outputs([0.9, 0.5, 0.0], [1, 0, 0], masks))
    assert stats["labels_mismatch"] == 1


def test_generic_compare_and_postprocess_contract():
    class Boxes:  # a model without compare_outputs or postprocess
        output_names = ("boxes", "labels")

    stats = ModelAdapter(Boxes()).compare({"boxes": np.zeros((2, 4)), "labels": np.array([1, 2])},
                                          {"boxes": np.full((2, 4), 0.25), "labels": np.array([1, 3])})
    assert stats == {"boxes_max_abs": 0.25, "boxes_ref_max": 0.0, "labels_mismatch": 1.0}
    with pytest.raises(AttributeError, match="postprocess"):
        ModelAdapter(Boxes()).postprocess({}, {})


def test_solov2_postprocess_keeps_valid_prefix_and_pastes():
    probs = torch.zeros(3, 8, 10)
    probs[0, 2:6, 2:6] = 0.9  # canvas 32x40, pad (4, 0), image 24x40 -> original 12x20
    probs[1, 0:2, 0:2] = 0.8
    out = solov2_adapter().postprocess(
        {"masks": probs.numpy(), "labels": np.array([2, 0, 1], np.int32), "scores": np.array([0.3, 0.7, 0.0])},
        {"ori_shape": (12, 20), "img_shape": (24, 40), "pad": (4, 0), "canvas": (32, 40)})
    assert out["scores"].tolist() == pytest.approx([0.7, 0.3]) and out["labels"].tolist() == [0, 2]
    assert out["masks"].shape == (2, 12, 20) and out["masks"].dtype == torch.bool
    # slot 0 covers canvas rows 8..24 -> image rows 4..20 -> original rows 2..10, cols 4..12
    assert out["boxes"][1].tolist() == pytest.approx([4, 2, 12, 10], abs=1)


def test_atc_command_options():
    cmd = atc_command("m.onnx", "out/m", "input", 4, (800, 1216), "Ascend310P3", "force_fp16", "error",
                      dynamic_batch=[1, 4, 8], customize_dtypes="keep.cfg", extra_args=["--op_debug_level=0"])
    assert cmd == ["atc", "--framework=5", "--model=m.onnx", "--output=out/m", "--input_format=NCHW",
                   "--input_shape=input:-1,3,800,1216", "--soc_version=Ascend310P3", "--log=error",
                   "--precision_mode=force_fp16", "--dynamic_batch_size=1,4,8", "--customize_dtypes=keep.cfg",
                   "--op_debug_level=0"]
