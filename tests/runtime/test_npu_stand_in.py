"""The torch_npu stand-in behaves as torch_npu's source defines it (see tests/stand_ins/torch_npu.py)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from stand_ins import torch_npu as npu_stand_in
from stand_ins.child import in_child


@pytest.fixture
def host_npu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host tensors count as NPU tensors, as for the installed stand-in (``install(npu_memory="cpu")``)."""
    monkeypatch.setattr(npu_stand_in, "NPU_MEMORY", "cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, nesterov=True),
                                    dict(momentum=0.5, dampening=0.3), dict()])
def test_fused_sgd_matches_torch_sgd(kwargs, host_npu_memory) -> None:
    # op-plugin docs (torch_npu-optim-NpuFusedSGD.md): "core function compatible with torch.optim.SGD".
    model, reference = _model(), _model()
    fused = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1, **kwargs)
    plain = torch.optim.SGD(reference.parameters(), lr=0.1, **kwargs)
    for step in range(4):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        for net, opt in ((model, fused), (reference, plain)):
            opt.zero_grad(set_to_none=False)
            net(x).square().sum().backward()
            opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert fused.calls["step"] == 4 and fused.is_params_grads_combined


def test_fused_sgd_raises_where_torch_npu_raises() -> None:
    # Messages of npu_fused_sgd.py __init__ and npu_fused_optim_base.py.
    params = list(_model().parameters())
    with pytest.raises(ValueError, match="Invalid learning rate"):
        npu_stand_in.NpuFusedSGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        npu_stand_in.NpuFusedSGD(params, lr=0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        npu_stand_in.NpuFusedSGD(params, lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        npu_stand_in.NpuFusedSGD(params, lr=0.1, nesterov=True)
    opt = npu_stand_in.NpuFusedSGD(params, lr=0.1)
    with pytest.raises(ValueError, match="^set_to_none is not supported in fused optimizers$"):
        opt.zero_grad(set_to_none=True)  # raised even before anything was combined
    double = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    double.grad = torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError, match="must be either float32 or float16, but received torch.float64"):
        npu_stand_in.NpuFusedSGD([double], lr=0.1).step()


def test_combined_buffer_holds_gradients_and_reallocation_is_caught(host_npu_memory) -> None:
    model = _model()
    opt = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    flat = opt.get_combined_grads()[0]
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    opt.zero_grad()
    assert float(flat.abs().sum()) == 0.0
    model(torch.randn(2, 4)).sum().backward()  # accumulates in place, inside the buffer
    assert float(flat.abs().sum()) > 0.0
    first = next(model.parameters())
    first.grad = first.grad.clone()  # re-allocated: the real optimiser would step on the stale buffer
    with pytest.raises(RuntimeError, match="re-allocated"):
        opt.step()


def test_parameters_without_a_gradient_at_first_use_are_never_updated(host_npu_memory) -> None:
    # _maybe_init_combined_params_and_grads skips p.grad is None, and the buffer is built once.
    model = _model()
    opt = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1)
    model[2](torch.randn(2, 3)).sum().backward()  # only the last layer gets gradients
    opt.step()
    before = model[0].weight.detach().clone()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert torch.equal(model[0].weight, before)


@in_child  # torch.device("npu", 1) needs the PrivateUse1 backend named "npu"
def test_npu_module_checks_devices() -> None:
    npu = npu_stand_in.build(device_count=2).npu
    assert npu.device_count() == 2 and npu.is_available()
    npu.set_device(torch.device("npu", 1))
    assert npu.current_device() == 1
    with pytest.raises(ValueError, match="Expected a npu device, but got: cpu"):
        npu.set_device(torch.device("cpu"))
    with pytest.raises(AssertionError, match="Invalid device id"):
        npu.get_device_name(5)
    npu.set_compile_mode(jit_compile=False)
    assert npu.calls["jitCompile"] == "disable"


def test_combine_refuses_tensors_off_the_npu(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch_npu/utils/combine_tensors.py: RuntimeError("Tensors to combine must be on NPU, got {}.").
    with pytest.raises(RuntimeError, match=r"^Tensors to combine must be on NPU, got cpu\.$"):
        npu_stand_in.npu_combine_tensors([torch.zeros(2)])
    model = _model()
    opt = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1)  # built on parameters left on the host
    model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(RuntimeError, match="must be on NPU, got cpu"):
        opt.step()
    monkeypatch.setattr(npu_stand_in, "NPU_MEMORY", "cpu")  # the installed stand-in's NPU memory
    assert npu_stand_in.npu_combine_tensors([torch.ones(2), torch.ones(3)]).tolist() == [1.0] * 5
    with pytest.raises(RuntimeError, match=r"must be on NPU, got meta\.$"):
        npu_stand_in.npu_combine_tensors([torch.ones(2), torch.empty(2, device="meta")])


def test_set_device_beyond_the_device_count_raises() -> None:
    # npu/utils.py set_device ignores a negative index; _npu_setDevice raises the ACL error 107001
    # (ACL_ERROR_RT_INVALID_DEVICEID) for an index the runtime does not have.
    npu = npu_stand_in.build(device_count=2).npu
    npu.set_device(1)
    with pytest.raises(RuntimeError, match="NPU function error: c10_npu::SetDevice\\(device\\), error code is 107001"):
        npu.set_device(2)
    npu.set_device(-1)
    assert npu.current_device() == 1


@pytest.mark.parametrize(("bf16", "dtypes"), [(True, [torch.float16, torch.bfloat16, torch.float32]),
                                              (False, [torch.float16, torch.float32])])
def test_amp_dtypes_follow_bf16_support(bf16: bool, dtypes: list[torch.dtype]) -> None:
    # torch_npu/npu/autocast_utils.py get_amp_supported_dtype.
    npu = npu_stand_in.build(bf16=bf16).npu
    assert npu.is_bf16_supported() is bf16 and npu.get_amp_supported_dtype() == dtypes


@in_child  # torch.autocast("npu") needs the PrivateUse1 backend named "npu"
def test_autocast_on_the_npu_works_on_every_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch 2.1's torch.autocast asks the backend module for is_autocast_enabled, set_autocast_enabled,
    # get_autocast_dtype, set_autocast_dtype and get_amp_supported_dtype (torch/amp/autocast_mode.py), which
    # torch_npu/npu/autocast_utils.py @ 287c65d6 defines; later releases ask get_amp_supported_dtype only.
    npu = npu_stand_in.install(monkeypatch).npu
    with torch.autocast("npu", dtype=torch.float16):
        y = torch.ones(2, 2) @ torch.ones(2, 2)  # host tensors: the NPU's autocast leaves them alone
    assert y.dtype == torch.float32
    assert not npu.is_autocast_enabled() and npu.get_autocast_dtype() == torch.float16
    npu.set_autocast_enabled(True)
    npu.set_autocast_dtype(torch.bfloat16)
    assert npu.is_autocast_enabled() and npu.get_autocast_dtype() == torch.bfloat16


@in_child  # torch.autocast("npu") needs the PrivateUse1 backend named "npu"
def test_autocast_enabled_answers_for_the_npu_on_every_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch >= 2.4: torch.is_autocast_enabled("npu"); before, the state torch.autocast keeps in torch.npu
    # (torch/amp/autocast_mode.py __enter__: custom_device_mod.set_autocast_enabled), not CUDA's answer.
    from solo_npu.runtime.compat import autocast_enabled

    npu_stand_in.install(monkeypatch)
    assert not autocast_enabled("npu")
    with torch.autocast("npu", dtype=torch.float16):
        assert autocast_enabled("npu") and not autocast_enabled("cpu")
    assert not autocast_enabled("npu")
    with pytest.raises(ValueError) if torch.__version__ < "2.4" else contextlib.nullcontext():
        autocast_enabled("xpu")


@pytest.mark.parametrize(("visible", "count"), [(None, 8), ("", 0), ("4,5", 2), ("0,1,2", 3), ("1,0", 0),
                                                ("6,9", 1), ("2,a,3", 1), ("3,", 1)])
def test_device_count_reads_the_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str | None,
                                                count: int) -> None:
    # torch_npu/npu/__init__.py @ a145e511: _parse_visible_devices and _device_count_ascend_hal.
    if visible is None:
        monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", visible)
    npu = npu_stand_in.build(device_count=8).npu
    assert npu.device_count() == count and npu.is_available() is (count > 0)


@pytest.mark.parametrize("count_cache", ["lru", "after_init"])
def test_device_count_caches_as_torch_npu_does(monkeypatch: pytest.MonkeyPatch, count_cache: str) -> None:
    # fe31f4d8 (older torch_npu): @lru_cache from the first call. a145e511 (newer): re-read until the NPU is
    # initialised, cached from then on.
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1")
    npu = npu_stand_in.build(device_count=8, count_cache=count_cache).npu
    assert npu.device_count() == 2
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")
    assert npu.device_count() == (2 if count_cache == "lru" else 1)
    npu.synchronize()  # initialises the NPU (_lazy_init); the next count is the one kept
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1,2")
    assert npu.device_count() == (2 if count_cache == "lru" else 3)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")
    assert npu.device_count() == (2 if count_cache == "lru" else 3)


@in_child  # the scaler runs under the installed stand-in (torch_npu imports itself)
def test_grad_scaler_keeps_torch_npus_contract(monkeypatch: pytest.MonkeyPatch, host_npu_memory: None) -> None:
    # torch_npu/npu/amp/grad_scaler.py @ 4ee8ead9.
    npu_stand_in.install(monkeypatch)
    scaler_cls = npu_stand_in.GradScaler
    assert issubclass(scaler_cls, torch.cuda.amp.GradScaler)
    if hasattr(torch.amp, "GradScaler"):
        assert issubclass(scaler_cls, torch.amp.GradScaler)
    with pytest.raises(ValueError, match="The growth factor must be > 1.0."):
        scaler_cls(growth_factor=1.0)
    scaler = scaler_cls(init_scale=8.0)
    assert scaler.state_dict() == {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                   "_growth_tracker": 0, "dynamic": True}
    with pytest.raises(KeyError, match="dynamic"):
        scaler.load_state_dict({"scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                "_growth_tracker": 0})
    with pytest.raises(RuntimeError, match="The source state dict is empty"):
        scaler.load_state_dict({})
    with pytest.raises(ValueError, match="Device type of outputs should be npu."):
        scaler.scale(torch.ones(1, device="meta"))
    # A fused optimiser's combined gradient buffer is unscaled directly; dynamic=False only unscales.
    model = _model()
    opt = npu_stand_in.NpuFusedSGD(model.parameters(), lr=0.1)
    static = scaler_cls(init_scale=4.0, dynamic=False)
    static.scale(model(torch.randn(2, 4)).sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    static.unscale_(opt)
    assert opt.is_params_grads_combined
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g / 4)
    # No NPU: a warning, and the scaler disables itself (torch_npu/npu/amp/common.py).
    npu_stand_in.install(monkeypatch, device_count=0)
    with pytest.warns(UserWarning, match="NPU is not available.  Disabling."):
        assert not scaler_cls().is_enabled()
