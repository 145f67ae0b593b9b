"""Adapter selection from the model config and the verify comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.deploy.adapters import DeployAdapter, SOLOv2Adapter, build_adapter
from solo_npu.deploy.compile_310p import atc_command


def test_build_adapter_from_model_config():
    assert type(build_adapter(OmegaConf.create({}))) is SOLOv2Adapter
    adapter = build_adapter(OmegaConf.create({"deploy": {
        "adapter": {"_target_": "solo_npu.deploy.adapters.SOLOv2Adapter", "score_thr": 0.2, "topk": 5},
        "anchors": [{"source": "mine", "fps": 1.0}]}}))
    assert (adapter.score_thr, adapter.topk, adapter.anchors) == (0.2, 5, [{"source": "mine", "fps": 1.0}])
    by_name = build_adapter(OmegaConf.create({"deploy": {"adapter": "solo_npu.deploy.adapters.SOLOv2Adapter"}}))
    assert by_name.output_names == ("masks", "labels", "scores") and by_name.anchors[0]["fps"] == 26.19
    with pytest.raises(TypeError, match="not a DeployAdapter"):
        build_adapter(OmegaConf.create({"deploy": {"adapter": {"_target_": "collections.OrderedDict"}}}))


def _outputs(scores, labels, masks):
    return {"scores": np.asarray([scores], np.float32), "labels": np.asarray([labels], np.int32),
            "masks": np.asarray([masks], np.float32)}


def test_solov2_compare_checks_valid_slots_only():
    masks = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    ref = _outputs([0.9, 0.5, 0.0], [1, 2, 0], masks)
    other = masks.copy()
    other[0] += 3e-4  # valid slot: counts
    other[2] = 1 - other[2]  # padding slot (score 0): arbitrary, ignored
    stats = SOLOv2Adapter().compare(ref, _outputs([0.9, 0.5001, 0.0], [1, 2, 2], other))
    assert stats["masks_max_abs"] == pytest.approx(3e-4, rel=1e-3)
    assert stats["scores_max_abs"] == pytest.approx(1e-4, rel=1e-2)
    assert (stats["labels_mismatch"], stats["valid"]) == (0, 2)
    stats = SOLOv2Adapter().compare(ref, _outputs([0.9, 0.5, 0.0], [1, 0, 0], masks))
    assert stats["labels_mismatch"] == 1


def test_generic_compare_and_postprocess_contract():
    class Boxes(DeployAdapter):
        output_names = ("boxes", "labels")

    stats = Boxes().compare({"boxes": np.zeros((2, 4)), "labels": np.array([1, 2])},
                            {"boxes": np.full((2, 4), 0.25), "labels": np.array([1, 3])})
    assert stats == {"boxes_max_abs": 0.25, "boxes_ref_max": 0.0, "labels_mismatch": 1.0}
    with pytest.raises(NotImplementedError):
        Boxes().postprocess({}, {})


def test_solov2_postprocess_keeps_valid_prefix_and_pastes():
    probs = torch.zeros(3, 8, 10)
    probs[0, 2:6, 2:6] = 0.9  # canvas 32x40, pad (4, 0), image 24x40 -> original 12x20
    probs[1, 0:2, 0:2] = 0.8
    out = SOLOv2Adapter().postprocess(
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
