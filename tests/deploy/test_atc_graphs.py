"""ATC-ready ONNX graphs: every model exports at opsets 11, 13 and 17, onnxslim leaves no Resize with a
run-time size and does not change the outputs, index arithmetic after TopK runs in int32, and SOLOv2 keeps
the output contract of the Ascend ModelZoo SOLOV2 torch_aie inference guide (310P3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from solo_npu.deploy.adapters import ModelAdapter
from solo_npu.deploy.context import DeployError
from solo_npu.deploy.export import example_input, export_onnx, module_device, module_example, slim_onnx
from solo_npu.models import build_model, split_model_config
from solo_npu.models.fcos import build_fcos
from solo_npu.models.ssd_resnet34 import SSDResNet34
from solo_npu.models.yolact_edge import build_yolact_edge

ROOT = Path(__file__).resolve().parents[2]
# Resize-11 and Resize-13 (onnx/docs/Operators.md, "Resize"; opset 17 still takes Resize-13, as
# onnx.defs.get_schema("Resize", 17).since_version says; Resize-18 came with opset 18, onnx/docs/Changelog.md):
# inputs X, roi, scales, sizes; the output size comes from `scales` or `sizes`, so those two are what must be known
# before run time.
RESIZE_SIZE_INPUTS = (2, 3)


def build(name: str) -> tuple[nn.Module, list[int]]:
    """A tiny random-weight model of each family and its [H, W] input."""
    torch.manual_seed(0)
    if name == "solov2":
        cfg = OmegaConf.load(ROOT / "conf" / "model" / "solov2_tiny.yaml")
        cfg.num_classes = 3
        return build_model(cfg).eval(), [128, 160]
    if name == "fcos":
        return build_fcos(num_classes=3, depth=18, fpn_channels=16, feat_channels=16, stacked_convs=1, num_groups=4,
                          nms_pre=50).eval(), [128, 160]
    if name == "yolact_edge":
        return build_yolact_edge(num_classes=3, depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=128,
                                 top_k=20, max_num_detections=10).eval(), [128, 128]
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    return SSDResNet34(trunk, (16, 16, 16, 8, 8, 8), (8, 8, 8, 8, 8), num_classes=3, fig_size=320,
                       max_output=20).eval(), [320, 320]


def resizes_with_runtime_size(model: onnx.ModelProto) -> list[str]:
    known = {i.name for i in model.graph.initializer}
    known |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Resize"
            and any(i < len(n.input) and n.input[i] and n.input[i] not in known for i in RESIZE_SIZE_INPUTS)]


def ops_on_topk_int64_indices(model: onnx.ModelProto) -> list[str]:
    """Nodes other than a Cast that take TopK's int64 indices, or an int64 value computed from them.

    CANN's Ascend 310P AI Core operator information (CANN 8.1.RC1, ``opp/built-in/op_impl/ai_core/tbe/config/
    ascend310p/aic-ascend310p-ops-info.json``) has no int64 kernel for Div, Mod or Expand, and CANN's supported
    ONNX operator list for Atlas inference products gives Mod, Less and Where no int64: index arithmetic on
    TopK's indices (int64 in ONNX, onnx/docs/Operators.md "TopK") must be cast to int32 first.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    dtypes = {v.name: v.type.tensor_type.elem_type
              for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    tainted = {n.output[1] for n in model.graph.node if n.op_type == "TopK"}
    found = []
    for node in model.graph.node:  # ONNX graphs list their nodes in topological order
        if not any(i in tainted for i in node.input):
            continue
        if node.op_type != "Cast":
            found.append(node.op_type)
        tainted.update(o for o in node.output if dtypes.get(o) == onnx.TensorProto.INT64)
    return found


def run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})


@pytest.mark.parametrize("opset", [11, 13, 17])  # deploy.opset=17: CANN 7.0 and later (docs/deploy.md)
@pytest.mark.parametrize("name", ["solov2", "fcos", "yolact_edge", "ssd_resnet34"])
def test_export_slim_and_resize_sizes(name, opset, tmp_path):
    model, shape = build(name)
    adapter = ModelAdapter(model)
    module = adapter.export_module()
    x = example_input(1, shape)
    raw = export_onnx(module, x, tmp_path / "raw.onnx", adapter.output_names, opset)
    slim = tmp_path / "slim.onnx"
    shutil.copy(raw, slim)
    assert slim_onnx(slim) == "onnxslim"
    graph = onnx.load(str(slim))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == opset
    if name != "ssd_resnet34":  # SSD has no Resize at all
        assert any(n.op_type == "Resize" for n in graph.graph.node)
    assert resizes_with_runtime_size(graph) == []
    assert ops_on_topk_int64_indices(graph) == []
    # The simplifier must not change what the graph computes (it once folded a float Div as an integer one).
    for a, b in zip(run_onnx(raw, x.numpy()), run_onnx(slim, x.numpy())):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def solov2_r50_graph_at_seed_shape() -> nn.Module:
    """SOLOv2 with the R50 config's head layout (grids, strides, K=100) and narrow layers, so that a
    1x3x800x1216 export takes seconds; the output shapes depend only on the input, grids and K."""
    overrides = ["model=solov2", "model.pretrained=null", "model.backbone.depth=18",
                 "+model.backbone.base_channels=8", "model.neck.in_channels=[8,16,32,64]", "model.neck.out_channels=16",
                 "model.head.in_channels=16", "model.head.feat_channels=16", "model.head.stacked_convs=1",
                 "model.head.num_groups=4", "model.head.mask_feature.feat_channels=8",
                 "model.head.mask_feature.out_channels=8", "data.num_classes=80"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=overrides)
    spec, deploy = split_model_config(cfg.model)
    assert deploy["input_shape"] == [800, 1216] and spec["test"]["export_topk"] == 100
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


@pytest.mark.parametrize("opset", [11, 13, 17])  # deploy.opset=17: CANN 7.0 and later (docs/deploy.md)
def test_solov2_output_contract_of_the_310p_guide(opset, tmp_path):
    """Ascend ModelZoo SOLOV2 torch_aie guide (310P3): input 1x3x800x1216; outputs masks 1x100x200x304
    float32, labels 1x100 int32, scores 1x100 float32 (the guide's README output table)."""
    model = solov2_r50_graph_at_seed_shape()
    adapter = ModelAdapter(model)
    path = export_onnx(adapter.export_module(), example_input(1, [800, 1216]), tmp_path / "s.onnx",
                       adapter.output_names, opset)
    slim_onnx(path)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True).graph

    def signature(value: onnx.ValueInfoProto) -> tuple[str, list[int], int]:
        t = value.type.tensor_type
        return value.name, [d.dim_value for d in t.shape.dim], t.elem_type

    F32, I32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    assert [signature(v) for v in graph.input] == [("input", [1, 3, 800, 1216], F32)]
    assert [signature(v) for v in graph.output] == [("masks", [1, 100, 200, 304], F32), ("labels", [1, 100], I32),
                                                   ("scores", [1, 100], F32)]
    assert resizes_with_runtime_size(onnx.load(str(path))) == []
    assert ops_on_topk_int64_indices(onnx.load(str(path))) == []


def test_example_follows_the_model_device():
    model, shape = build("fcos")
    assert module_example(model, 2, shape).device == torch.device("cpu")
    meta = model.to("meta")  # a non-CPU device this machine has: export cannot run there, placement can
    assert module_device(meta) == torch.device("meta")
    example = module_example(meta, 2, shape)
    assert example.device == torch.device("meta") and tuple(example.shape) == (2, 3, *shape)


def test_failing_export_is_one_line(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return (torch.linalg.eigvals(x[0, 0, :4, :4]).real,)  # no ONNX symbolic for aten::linalg_eig

    with pytest.raises(DeployError) as info:
        export_onnx(Unexportable(), torch.zeros(1, 3, 8, 8), tmp_path / "m.onnx", ["out"], 13)
    message = str(info.value)
    assert "\n" not in message and message.startswith("ONNX export of m.onnx at opset 13 failed: ")
