"""Loss scaling on the NPU uses torch_npu's own GradScaler (torch_npu/npu/amp/grad_scaler.py), on every torch.

On chips in saturation mode (Ascend 910: ``is_support_inf_nan()`` False) that scaler all-reduces an overflow count
across the ranks, so every rank skips the steps any of them overflowed on; PyTorch's scaler decides per rank. Its
state carries ``"dynamic"``, which a state saved by PyTorch's scaler lacks. The scaler here is the stand-in's
(tests/stand_ins/torch_npu.py), which reproduces that class on host memory.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from stand_ins import torch_npu as npu_stand_in
from stand_ins.child import in_child
from torch.utils.data import DataLoader

from solo_npu import runtime
from solo_npu.engine import comm
from solo_npu.engine.checkpointer import restore_training_state, training_state
from solo_npu.engine.trainer import Trainer

# An NPU-kind device whose memory is the host's (the installed stand-in takes CPU tensors for NPU tensors).
NPU = runtime.DeviceInfo("npu", torch.device("cpu"))
# What PyTorch's scalers save (torch.amp.GradScaler.state_dict; torch.cuda.amp.GradScaler's on torch 2.1): no
# "dynamic".
PYTORCH_STATE = {"scale": 64.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                 "_growth_tracker": 7}


@in_child
def test_npu_scaling_uses_torch_npus_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    npu_stand_in.install(monkeypatch)
    assert runtime.grad_scaler_class("npu") is npu_stand_in.GradScaler
    dynamic = runtime.make_grad_scaler(NPU, enabled=True, loss_scale="dynamic", dtype="fp16")
    assert type(dynamic) is npu_stand_in.GradScaler
    assert dynamic.is_enabled() and dynamic._dynamic and dynamic.get_scale() == 2.0**16
    # Its constructor takes no device, although the class is a torch.amp.GradScaler on torch >= 2.3: the arguments
    # follow the signature, not the class tree.
    static = runtime.make_grad_scaler(NPU, enabled=True, loss_scale=128, dtype="fp16")
    assert isinstance(static, npu_stand_in.GradScaler) and isinstance(static, runtime.StaticGradScaler)
    assert static.get_scale() == 128.0 and static._dynamic  # dynamic underneath: inf/NaN still checked
    assert static.state_dict()["dynamic"] is True
    assert not runtime.make_grad_scaler(NPU, enabled=True, loss_scale=128, dtype="bf16").is_enabled()


def test_without_torch_npus_scaler_the_npu_uses_pytorchs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = npu_stand_in.build()
    del fake.npu.amp
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    if runtime.has_device_generic_grad_scaler():
        assert runtime.grad_scaler_class("npu") is torch.amp.GradScaler
    else:
        with pytest.raises(runtime.DeviceError, match="torch_npu.npu.amp.GradScaler is missing"):
            runtime.grad_scaler_class("npu")


@in_child
def test_static_npu_scaler_skips_overflowing_steps_and_keeps_its_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    npu = npu_stand_in.install(monkeypatch, support_inf_nan=False).npu  # Ascend 910: saturation mode
    scaler = runtime.make_grad_scaler(NPU, enabled=True, loss_scale=128, dtype="fp16")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    scaler.scale(p.sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(3)) and scaler.get_scale() == 128.0  # skipped, no back-off
    opt.zero_grad()
    scaler.scale(p.sum()).backward()
    scaler.unscale_(opt)
    assert torch.equal(p.grad, torch.ones(3))  # true gradients after unscale_
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.full((3,), 0.5)) and scaler.get_scale() == 128.0
    assert npu.calls["clear_npu_overflow_flag"] == 2  # once per step, at its first scale()


@in_child
def test_resume_from_a_pytorch_scaler_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved by PyTorch's scaler (a CUDA run, another torch) resumes into torch_npu's, which reads
    ``state_dict["dynamic"]``; torch_npu's state, with it, loads into PyTorch's."""
    npu_stand_in.install(monkeypatch)
    if runtime.has_device_generic_grad_scaler():
        assert set(torch.amp.GradScaler("cpu").state_dict()) == set(PYTORCH_STATE)
    with pytest.raises(KeyError, match="dynamic"):  # torch_npu's own load_state_dict
        runtime.make_grad_scaler(NPU, True, 128).load_state_dict(PYTORCH_STATE)

    def trainer() -> Trainer:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(list(range(8)), batch_size=4),
                       NPU, max_epochs=1, iters_per_epoch=2, batch_size=4,
                       scaler=runtime.make_grad_scaler(NPU, True, 128), amp=True)

    state = training_state(trainer())
    assert state["scaler"]["dynamic"] is True
    state["scaler"] = dict(PYTORCH_STATE)
    resumed = trainer()
    restore_training_state(resumed, state)
    # the static amp.loss_scale holds from the first resumed step (restore_training_state WARNs the checkpoint's 64)
    assert resumed.scaler.get_scale() == 128.0 and resumed.scaler._get_growth_tracker() == 7
    assert resumed.scaler.state_dict()["dynamic"] is True
    dynamic = runtime.make_grad_scaler(NPU, True, "dynamic")  # torch_npu's own scaler, which takes the saved scale
    runtime.load_grad_scaler_state(dynamic, dict(PYTORCH_STATE))
    assert dynamic.get_scale() == 64.0 and dynamic._get_growth_tracker() == 7
    if runtime.has_device_generic_grad_scaler():
        plain = torch.amp.GradScaler("cpu")
        runtime.load_grad_scaler_state(plain, {**PYTORCH_STATE, "dynamic": True})
        assert plain.get_scale() == 64.0


def _rank(rank: int, init_file: str, out: str) -> None:
    """One of two ranks: the first overflows, the second does not; with each mode of the chip."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    # Every scaler stays referenced until the group is gone, so no gloo thread is left to free an all-reduced
    # overflow count's Python object while the group is destroyed (see comm.destroy_process_group).
    scalers = []
    try:
        results = {}
        for saturation in (True, False):
            npu_stand_in.install(support_inf_nan=not saturation)
            scaler = runtime.make_grad_scaler(NPU, enabled=True, loss_scale="dynamic", dtype="fp16")
            scalers.append(scaler)
            p = torch.nn.Parameter(torch.ones(3))
            opt = torch.optim.SGD([p], lr=0.5)
            scaler.scale(p.sum() * (float("inf") if rank == 0 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
            results["saturation" if saturation else "inf_nan"] = {
                "stepped": not torch.equal(p.detach(), torch.ones(3)), "scale": scaler.get_scale(),
                "class": type(scaler).__name__}
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
        dist.barrier()  # as the launcher does before destroy_process_group
    finally:
        comm.destroy_process_group()  # the launcher's teardown


def test_in_saturation_mode_every_rank_skips_a_step_one_rank_overflowed_on(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert {r[mode]["class"] for r in ranks for mode in r} == {"GradScaler"}
    # Ascend 910: the overflow count is all-reduced; both ranks skip and back off.
    assert [r["saturation"] for r in ranks] == [{"stepped": False, "scale": 2.0**15, "class": "GradScaler"}] * 2
    # Chips with inf/NaN (Ascend 910B): each rank decides on its own gradients, as torch_npu does there.
    assert [(r["inf_nan"]["stepped"], r["inf_nan"]["scale"]) for r in ranks] == [(False, 2.0**15), (True, 2.0**16)]


def test_scaler_arguments_follow_the_constructor() -> None:
    """torch_npu's GradScaler subclasses torch.cuda.amp.GradScaler (a torch.amp.GradScaler on torch >= 2.3) but
    takes no device: the runtime reads the constructor."""
    from solo_npu.runtime.device import _grad_scaler_args

    assert list(inspect.signature(npu_stand_in.GradScaler.__init__).parameters) == [
        "self", "init_scale", "growth_factor", "backoff_factor", "growth_interval", "dynamic", "enabled"]
    assert issubclass(npu_stand_in.GradScaler, torch.cuda.amp.GradScaler)
    assert _grad_scaler_args(npu_stand_in.GradScaler, "npu", 128.0, True) == (
        (), {"init_scale": 128.0, "enabled": True, "dynamic": True})
    assert _grad_scaler_args(torch.cuda.amp.GradScaler, "cuda", 1.0, False) == (
        (), {"init_scale": 1.0, "enabled": False})
    if runtime.has_device_generic_grad_scaler():
        assert issubclass(npu_stand_in.GradScaler, torch.amp.GradScaler)
        assert _grad_scaler_args(torch.amp.GradScaler, "npu", 128.0, True) == (
            ("npu",), {"init_scale": 128.0, "enabled": True})


class _Overflowing(torch.nn.Module):
    """A finite loss whose scaled gradients overflow (1e38 x the scale is inf in float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.ones(3))

    def forward(self, images: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss_x": (self.p * images.float().mean()).sum() * 1e38}


@in_child
@pytest.mark.parametrize("saturation", [False, True], ids=["inf_nan", "saturation"])
def test_static_scale_overflows_count_as_skipped_steps_and_stop_the_run(monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture,
                                                                        saturation: bool) -> None:
    """A fixed scale never backs off, so a step whose scaled gradients overflow is skipped by the scaler and the
    next one overflows again: each is counted like a non-finite loss, and train.max_nonfinite in a row stops the
    run (a dynamic scale backs off instead, and its overflow steps are not counted). On a chip in saturation mode
    (Ascend 910) the overflowing gradients stay finite and scaled: the scaler's finding counts, not their norm."""
    from solo_npu.engine.trainer import NonFiniteLossError

    npu_stand_in.install(monkeypatch, support_inf_nan=not saturation)
    batches = [{"images": torch.ones(1, 3)}] * 8

    def run(loss_scale: Any) -> Trainer:
        model = _Overflowing()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, NPU, max_epochs=1,
                          iters_per_epoch=8, batch_size=1, scaler=runtime.make_grad_scaler(NPU, True, loss_scale),
                          amp=True, max_nonfinite=3)
        for batch in batches[:3]:
            trainer.run_step(batch)
            trainer.iter += 1
        return trainer

    with pytest.raises(NonFiniteLossError, match="3 skipped steps in a row"):
        run(128)
    assert "gradient overflow" in caplog.text and "amp.loss_scale=128" in caplog.text
    dynamic = run("dynamic")
    assert dynamic.nonfinite_total == 0 and dynamic.scaler.get_scale() == 2.0**13  # backed off three times
    assert torch.equal(dynamic.model.p.detach(), torch.ones(3))
