"""YolactEdge ``export_mode="features"``: the six outputs of the Ascend ModelZoo YolactEdge inference guide
(310P) and host-side prediction heads that give the ``"detections"`` mode's results.

The guide's output table: ``output0..output4`` FLOAT32 ``bs x 256 x {69, 35, 18, 9, 5}`` squared and
``output5`` FLOAT32 ``bs x 138 x 138 x 32``, for the input ``bs x 3 x 550 x 550``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.deploy.adapters import ModelAdapter
from solo_npu.deploy.export import export_onnx
from solo_npu.models import build_model
from solo_npu.models.yolact_edge import YolactEdge, build_yolact_edge

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"

TINY = dict(depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=96, conf_thresh=0.0125, top_k=16,
            max_num_detections=12)


def meta_for(h0: int, w0: int, size: int) -> dict:
    return {"ori_shape": (h0, w0), "img_shape": (size, size), "pad": (0, 0), "canvas": (size, size),
            "scale_factor": (size / h0, size / w0), "flip": False}


def tiny(mode: str) -> YolactEdge:
    torch.manual_seed(0)
    return build_yolact_edge(export_mode=mode, **TINY)


def test_features_export_has_the_guides_six_outputs(tmp_path) -> None:
    # Full channel widths (256 FPN channels, 32 prototypes) on a ResNet-18 trunk: the same strides as R50.
    torch.manual_seed(0)
    model = build_yolact_edge(depth=18, proto_channels=8, export_mode="features")
    adapter = ModelAdapter(model)
    assert adapter.output_names == model.output_names == tuple(f"output{i}" for i in range(6))
    path = export_onnx(adapter.export_module(), torch.zeros(2, 3, 550, 550), tmp_path / "f.onnx",
                       adapter.output_names, opset=11)
    graph = onnx.load(str(path)).graph
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert [o.name for o in graph.output] == [f"output{i}" for i in range(6)]
    assert shapes == {"output0": [2, 256, 69, 69], "output1": [2, 256, 35, 35], "output2": [2, 256, 18, 18],
                      "output3": [2, 256, 9, 9], "output4": [2, 256, 5, 5], "output5": [2, 138, 138, 32]}
    assert {o.type.tensor_type.elem_type for o in graph.output} == {onnx.TensorProto.FLOAT}
    # no prediction head in the graph: its weights are not among the initializers
    assert graph.initializer and not any(i.name.startswith("model.prediction_layers") for i in graph.initializer)


def test_config_switches_model_and_adapter_together() -> None:
    cfg = OmegaConf.load(CONF / "yolact_edge.yaml")
    cfg.export_mode = "features"
    adapter = ModelAdapter(build_model(cfg, device="meta"))  # the adapter reads the model: one export_mode
    assert adapter.output_names == tuple(f"output{i}" for i in range(6))
    with pytest.raises(ValueError, match="export_mode"):
        build_yolact_edge(export_mode="boxes", **TINY)


def results_of(adapter: ModelAdapter, outputs: list[np.ndarray], metas: list[dict]) -> list[dict]:
    return [adapter.postprocess({n: o[i] for n, o in zip(adapter.output_names, outputs)}, meta)
            for i, meta in enumerate(metas)]


def test_features_mode_gives_the_detections_modes_results(tmp_path) -> None:
    det_model, feat_model = tiny("detections"), tiny("features")
    feat_model.load_state_dict(det_model.state_dict())  # the same checkpoint
    det_adapter, feat_adapter = ModelAdapter(det_model), ModelAdapter(feat_model)
    x = torch.randn(3, 3, 96, 96)
    metas = [meta_for(60, 90, 96), meta_for(96, 96, 96), meta_for(120, 70, 96)]
    found = 0
    for i, meta in enumerate(metas):  # eager, one image at a time: the same kernels, so equal bit for bit
        with torch.no_grad():
            det_eager = [t.numpy() for t in det_model.export_forward(x[i:i + 1])]
            feat_eager = [t.numpy() for t in feat_model.export_forward(x[i:i + 1])]
            predicted = det_model.predict(x[i:i + 1], [meta])[0]
        want = results_of(det_adapter, det_eager, [meta])[0]
        got = results_of(feat_adapter, feat_eager, [meta])[0]
        found += len(want["scores"])
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(got[key], want[key]) and torch.equal(got[key], predicted[key])
    assert found > 10
    # The same through ONNX Runtime: the device runs only the backbone, FPN and protonet.
    ort_out = {}
    for mode, model, adapter in (("det", det_model, det_adapter), ("feat", feat_model, feat_adapter)):
        path = export_onnx(adapter.export_module(model), x, tmp_path / f"{mode}.onnx", adapter.output_names, opset=11)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ort_out[mode] = sess.run(list(adapter.output_names), {"input": x.numpy()})
    # A batch of 3 on the device, one image at a time on the host: float32 rounding differs, results agree.
    feat_results = results_of(feat_adapter, ort_out["feat"], metas)
    for got, want in zip(feat_results, results_of(det_adapter, ort_out["det"], metas)):
        assert torch.equal(got["labels"], want["labels"])
        torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1.0)  # integer boxes
        assert (got["masks"] != want["masks"]).float().mean() < 1e-3
