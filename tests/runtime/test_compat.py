"""What differs between the oldest supported torch (2.1) and the newest: GradScaler classes and ONNX export.

Both lanes run these: `make test` (torch 2.13) and `make test-floor` (torch 2.1). Where a test needs the
other release's API it takes it away (or stands it in) with monkeypatch, so each branch is exercised on
either torch.
"""

import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
import torch

from solo_npu import runtime
from solo_npu.runtime import device as dev


class NpuGradScaler21:
    """Stand-in for ``torch_npu.npu.amp.GradScaler`` of torch-npu 2.1.0.post17.

    Follows torch_npu/npu/amp/grad_scaler.py of that wheel: the constructor takes no device argument,
    ``GradScaler(init_scale=2.**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
    dynamic=True, enabled=True)``, raises ValueError for growth_factor <= 1 or backoff_factor >= 1 when
    enabled, and ``update(new_scale)`` with a float sets the scale to it. It records what it was given.
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 dynamic=True, enabled=True):
        if enabled and growth_factor <= 1.0:
            raise ValueError("The growth factor must be > 1.0.")
        if enabled and backoff_factor >= 1.0:
            raise ValueError("The backoff factor must be < 1.0.")
        self._enabled = enabled
        self._dynamic = dynamic
        self.scale_value = float(init_scale)
        self.updates = []

    def is_enabled(self):
        return self._enabled

    def update(self, new_scale=None):
        self.updates.append(new_scale)
        if isinstance(new_scale, float):
            self.scale_value = new_scale


@pytest.fixture
def torch_before_2_3(monkeypatch):
    """torch as it was before 2.3: no torch.amp.GradScaler, torch_npu 2.1 with its own GradScaler."""
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    fake = types.ModuleType("torch_npu")
    fake.npu = types.SimpleNamespace(amp=types.SimpleNamespace(GradScaler=NpuGradScaler21))
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    return fake


def test_before_2_3_npu_scaling_uses_torch_npus_scaler(torch_before_2_3):
    npu = runtime.DeviceInfo("npu", torch.device("cpu"))  # only the kind matters for the class choice
    assert runtime.grad_scaler_class("npu") is NpuGradScaler21
    dynamic = runtime.make_grad_scaler(npu, enabled=True, loss_scale="dynamic", dtype="fp16")
    assert type(dynamic) is NpuGradScaler21
    assert dynamic.is_enabled() and dynamic._dynamic and dynamic.scale_value == 2.0**16

    static = runtime.make_grad_scaler(npu, enabled=True, loss_scale=128, dtype="fp16")
    assert isinstance(static, NpuGradScaler21) and isinstance(static, runtime.StaticGradScaler)
    # still torch_npu's dynamic mode: its dynamic=False stops checking gradients for inf/NaN
    assert static._dynamic and static.scale_value == 128.0
    static.scale_value = 64.0  # as if a step had backed off
    static.update()
    assert static.updates == [128.0] and static.scale_value == 128.0

    assert not runtime.make_grad_scaler(npu, enabled=True, loss_scale=128, dtype="bf16").is_enabled()


def test_before_2_3_cuda_and_cpu_use_torch_cuda_amp(torch_before_2_3):
    assert runtime.grad_scaler_class("cuda") is torch.cuda.amp.GradScaler
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    scaler = runtime.make_grad_scaler(cpu, enabled=True, loss_scale="dynamic")
    assert isinstance(scaler, torch.cuda.amp.GradScaler) and not scaler.is_enabled()  # CPU AMP is bf16


def test_before_2_3_npu_without_scaler_is_an_error(torch_before_2_3):
    torch_before_2_3.npu = types.SimpleNamespace()
    with pytest.raises(runtime.DeviceError, match="torch_npu.npu.amp.GradScaler"):
        runtime.grad_scaler_class("npu")


def test_scaler_class_on_the_installed_torch():
    expected = torch.amp.GradScaler if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler
    assert runtime.grad_scaler_class("cuda") is expected
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    static = runtime.StaticGradScaler("cpu", 128.0, enabled=False)
    assert isinstance(static, expected) and isinstance(static, runtime.StaticGradScaler)
    assert type(runtime.make_grad_scaler(cpu, enabled=False)) is expected
    assert dev._static_scaler_class(expected) is type(static)  # one subclass per base, not one per call


def test_onnx_export_kwargs_select_the_torchscript_exporter(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["out"], opset_version=13,
                          **runtime.torchscript_onnx_export_kwargs())
        expected = module(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_autocast_enabled_on_this_torch():
    """``autocast_enabled(device)`` answers on both releases (torch < 2.4 has no device argument)."""
    from solo_npu.runtime.compat import autocast_enabled

    assert not autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_enabled("cpu")
        assert not autocast_enabled("cuda")
    assert not autocast_enabled("cpu")


def test_only_accelerators_pad_work_sizes_to_a_few_shapes():
    assert not runtime.prefers_few_shapes(torch.device("cpu"))
    assert runtime.prefers_few_shapes(torch.device("cuda", 1)) and runtime.prefers_few_shapes("meta")
