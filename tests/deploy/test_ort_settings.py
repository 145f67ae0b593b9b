"""What a benchmark row says of how and where it ran: the memory a row reads."""

from __future__ import annotations

import torch

from solo_npu.deploy.backends import BACKENDS
from solo_npu.deploy.benchmark import memory_sampler
from solo_npu.runtime import DeviceInfo


def tiny_onnx(path, shape=(1, 3, 8, 8)):
    """``output = Relu(input)``; IR version 7 (opset 13's), which onnxruntime 1.23 reads too."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(path))
    return path


def test_memory_of_a_cpu_session_is_read_from_the_process_on_a_cuda_run(make_ctx, tmp_path, monkeypatch):
    """Run device CUDA, onnxruntime without the CUDA provider (on the CPU): the row says process RSS, so the sampler
    reads the process, not torch's CUDA allocator (which reports 300 MiB here)."""
    for name, value in (("memory_allocated", lambda i: 300 * 2**20), ("max_memory_allocated", lambda i: 300 * 2**20),
                        ("reset_peak_memory_stats", lambda i: None)):
        monkeypatch.setattr(torch.cuda, name, value)
    ctx = make_ctx("deploy.backends=[onnxruntime]")
    _ = ctx.adapter  # built while the context's device is still the CPU
    ctx.device = DeviceInfo("cuda", torch.device("cuda", 0), 0)
    backend = BACKENDS["onnxruntime"](ctx)
    backend.runner(1, {"files": {"onnx": {"1": str(tiny_onnx(tmp_path / "tiny.onnx"))}}})  # no outputs are read
    sampler, source = memory_sampler(ctx, backend)
    with sampler as memory:
        pass
    assert (backend.device, source, memory.device.type) == ("cpu", "process RSS", "cpu")
    assert memory.peak_mb != 300
