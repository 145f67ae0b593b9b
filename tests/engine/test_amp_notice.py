"""An AMP setting the device runs differently (fp16 on the CPU runs bf16) is a WARNING, not a silent change; bf16
on an accelerator that says it has no bf16 is one error before training, not an fp32 run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import run_train
from stand_ins import torch_npu as npu_stand_in
from stand_ins.child import in_child

from solo_npu.runtime import DeviceError, DeviceInfo, amp_notice, autocast, resolve_device

CPU = DeviceInfo("cpu", torch.device("cpu"))


def test_fp16_on_the_cpu_is_announced_as_bf16() -> None:
    with autocast(CPU, True, "fp16"):  # what the trainer runs: bf16, not the fp16 the config names
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    notice = amp_notice(CPU, True, "fp16")
    assert notice is not None and "amp.dtype=fp16 on the CPU: autocast runs bf16" in notice
    assert amp_notice(CPU, True, "bf16") is None and amp_notice(CPU, False, "fp16") is None
    assert amp_notice(DeviceInfo("cuda", torch.device("cuda", 0)), True, "fp16") is None


@pytest.mark.parametrize("dtype, warned", [("fp16", True), ("bf16", False)])
def test_a_cpu_training_run_says_which_precision_it_runs(tmp_path: Path, dtype: str, warned: bool) -> None:
    run_train(["amp.enabled=true", f"amp.dtype={dtype}", "train.max_iters=1", "train.eval_interval=0",
               "train.eval_at_end=false", "train.plots=false"], tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("autocast runs bf16 here") == (1 if warned else 0)


FIX = r"use amp\.dtype=fp16 \(with loss scaling\), or amp\.enabled=false for fp32$"


@in_child
def test_bf16_on_an_npu_without_bf16_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch_npu (npu/autocast_utils.py) lists fp16 and fp32 only where is_bf16_supported() is False, and
    # torch.autocast then warns and disables itself: the run would train in fp32, with the loss scaler off.
    npu_stand_in.install(monkeypatch, bf16=False)
    info = resolve_device("npu")
    with pytest.warns(UserWarning, match="target dtype is not supported. Disabling autocast"):
        with torch.autocast("npu", dtype=torch.bfloat16):
            pass
    with pytest.raises(DeviceError, match=r"^amp\.dtype=bf16 but this NPU device has no bfloat16 \(torch\.npu\."
                                          r"is_bf16_supported\(\) is False; torch\.autocast would only warn and "
                                          r"train in fp32\): " + FIX):
        amp_notice(info, True, "bf16")
    assert amp_notice(info, True, "fp16") is None and amp_notice(info, False, "bf16") is None
    npu_stand_in.install(monkeypatch, bf16=True)
    assert amp_notice(info, True, "bf16") is None


@in_child
def test_an_npu_training_run_in_bf16_without_bf16_stops_before_training(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    npu_stand_in.install(monkeypatch, bf16=False)
    with pytest.raises(DeviceError, match=r"^amp\.dtype=bf16 but this NPU device has no bfloat16 .*" + FIX):
        run_train(["runtime.device=npu", "amp.enabled=true", "amp.dtype=bf16", "train.max_iters=1",
                   "train.eval_interval=0", "train.eval_at_end=false", "train.plots=false"], tmp_path / "run")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_bf16_on_a_cuda_device_without_bf16_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.autocast raises at the first forward pass there (torch/amp/autocast_mode.py), inside the training loop.
    cuda = DeviceInfo("cuda", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(DeviceError, match=r"^amp\.dtype=bf16 but this CUDA device has no bfloat16 \(torch\.cuda\."
                                          r"is_bf16_supported\(\) is False; .*" + FIX):
        amp_notice(cuda, True, "bf16")
    assert amp_notice(cuda, True, "fp16") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert amp_notice(cuda, True, "bf16") is None


def test_a_static_loss_scale_with_bf16_on_an_accelerator_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 trains without loss scaling (make_grad_scaler turns the scaler off): the 1p/8p presets' static 128
    kept with amp.dtype=bf16 was dropped in silence."""
    from solo_npu.runtime import make_grad_scaler

    cuda = DeviceInfo("cuda", torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert not make_grad_scaler(cuda, True, 128, "bf16").is_enabled()
    assert amp_notice(cuda, True, "bf16", 128) == ("amp.loss_scale=128 is not used with amp.dtype=bf16: bf16 trains "
                                                   "without loss scaling (amp.loss_scale=dynamic says so)")
    assert amp_notice(cuda, True, "bf16", "dynamic") is None
    assert amp_notice(cuda, True, "fp16", 128) is None and amp_notice(cuda, False, "bf16", 128) is None


def test_fused_with_adamw_is_said(caplog: pytest.LogCaptureFixture) -> None:
    from torch import nn

    from solo_npu.engine.optim import build_optimizer

    with caplog.at_level("WARNING", logger="solo_npu.engine.optim"):
        opt = build_optimizer(nn.Linear(2, 2), {"name": "adamw", "fused": True}, CPU, 0.001)
    assert isinstance(opt, torch.optim.AdamW)
    assert "optim.fused=true is for SGD (torch_npu's NpuFusedSGD): optim.name=adamw runs torch's AdamW" in caplog.text
