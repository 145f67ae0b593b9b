import os
import sys
import types

import pytest
import torch

from solo_npu import runtime
from solo_npu.runtime import device as dev


@pytest.fixture
def no_npu(monkeypatch):
    """torch_npu absent: importing it raises ImportError."""
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    real_import = dev.importlib.import_module

    def fake_import(name, *a, **k):
        if name == "torch_npu":
            raise ImportError("No module named 'torch_npu'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(dev.importlib, "import_module", fake_import)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_npu(monkeypatch):
    """A stand-in torch_npu that reports two devices and records what setup_device asks of it."""
    # The real torch_npu registers the "npu" device type through PyTorch's PrivateUse1 backend.
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    calls = {}
    npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        set_device=lambda d: calls.setdefault("set_device", d),
        set_compile_mode=lambda jit_compile: calls.setdefault("jit_compile", jit_compile),
    )
    fake = types.ModuleType("torch_npu")
    fake.npu = npu
    fake.optim = types.SimpleNamespace(NpuFusedSGD=type("NpuFusedSGD", (torch.optim.SGD,), {}))
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    return calls


def test_auto_without_npu_or_cuda_is_cpu(no_npu):
    info = runtime.resolve_device("auto")
    assert info.type == "cpu" and info.device == torch.device("cpu")
    assert runtime.dist_backend(info) == "gloo"
    assert not runtime.is_npu_available()


def test_explicit_npu_without_torch_npu_says_how_to_install(no_npu):
    with pytest.raises(runtime.DeviceError, match=r"pip install \.\[npu\]"):
        runtime.resolve_device("npu")


def test_explicit_cuda_without_cuda_fails(no_npu):
    with pytest.raises(runtime.DeviceError, match="cuda"):
        runtime.resolve_device("cuda")


def test_unknown_device_name():
    with pytest.raises(runtime.DeviceError, match="unknown device 'tpu'"):
        runtime.resolve_device("tpu")


def test_fake_npu_is_preferred_and_ranks_wrap(fake_npu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # npu still wins
    info = runtime.resolve_device("auto", local_rank=3)
    assert info.type == "npu" and info.index == 1  # 3 % 2 devices
    assert runtime.dist_backend(info) == "hccl"
    assert runtime.resolve_device("npu:0").index == 0
    assert runtime.amp_dtype(info, "fp16") == torch.float16
    assert runtime.amp_dtype(info, "bf16") == torch.bfloat16


def test_fake_npu_setup_applies_env_and_compile_mode(fake_npu, monkeypatch):
    for key in dev.NPU_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "1")  # set by the user: kept
    monkeypatch.delenv("MY_VAR", raising=False)
    info = runtime.resolve_device("npu")
    runtime.setup_device(info, {"npu": {"jit_compile": False, "env": {"MY_VAR": "7"}}})
    assert fake_npu["jit_compile"] is False
    assert fake_npu["set_device"] == torch.device("npu", 0)
    assert os.environ["HCCL_CONNECT_TIMEOUT"] == "1800"
    assert os.environ["TASK_QUEUE_ENABLE"] == "1"
    assert os.environ["MY_VAR"] == "7"


def test_fused_sgd_only_on_npu(fake_npu):
    npu = runtime.resolve_device("npu")
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    assert runtime.sgd_class(npu, fused=True).__name__ == "NpuFusedSGD"
    assert runtime.sgd_class(npu, fused=False) is torch.optim.SGD
    assert runtime.sgd_class(cpu, fused=True) is torch.optim.SGD


def test_cpu_autocast_runs_bf16_and_scaler_is_off():
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    with runtime.autocast(cpu, enabled=True, dtype="fp16"):
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16
    with runtime.autocast(cpu, enabled=False):
        assert torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4)).dtype == torch.float32
    assert not runtime.make_grad_scaler(cpu, enabled=True, loss_scale=128).is_enabled()
    with pytest.raises(ValueError, match="amp.dtype"):
        runtime.amp_dtype(cpu, "fp8")
    with pytest.raises(ValueError, match="loss_scale"):
        runtime.make_grad_scaler(cpu, enabled=True, loss_scale=-1)


def test_static_scaler_keeps_scale_and_skips_inf_steps():
    scaler = runtime.StaticGradScaler("cpu", 128.0)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    scaler.scale(p.sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 128.0
    assert torch.equal(p.detach(), torch.ones(3))  # the inf step was skipped
    opt.zero_grad()
    scaler.scale(p.sum()).backward()
    assert torch.allclose(p.grad, torch.full((3,), 128.0))  # gradients carry the scale
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 128.0
    assert torch.allclose(p.detach(), torch.full((3,), 0.5))  # unscaled step: 1 - 0.5 * 1


def test_seed_everything_repeats():
    runtime.seed_everything(123)
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    runtime.seed_everything(123)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_memory_stats_cpu_reports_rss():
    cpu = runtime.DeviceInfo("cpu", torch.device("cpu"))
    stats = runtime.memory_stats(cpu)
    assert stats["allocated_mb"] > 10 and stats["peak_mb"] >= stats["allocated_mb"] * 0.5


def test_accelerator_rng_states_round_trip_on_fake_npu(fake_npu, monkeypatch):
    saved = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.npu.get_rng_state_all = lambda: [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    torch.npu.set_rng_state_all = lambda states: saved.setdefault("npu", states)
    states = runtime.accelerator_rng_states()
    assert list(states) == ["npu"] and torch.equal(states["npu"][0], torch.tensor([1, 2, 3], dtype=torch.uint8))
    runtime.set_accelerator_rng_states({**states, "cuda": [torch.zeros(1)]})  # no CUDA here: ignored
    assert saved["npu"] is states["npu"]


def test_describe_machine_names_cpu_and_torch():
    text = runtime.describe_machine()
    assert f"({__import__('os').cpu_count()} cores)" in text and torch.__version__ in text
