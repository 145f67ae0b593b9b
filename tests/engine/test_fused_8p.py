"""The 8p experiment's first steps on the torch_npu stand-in: two ranks, fused SGD, fp16 with loss scale 128.

Each worker installs the stand-in (tests/stand_ins/torch_npu.py) and runs the training job on an "npu"
device whose memory is the host's, so the engine takes every NPU decision (NpuFusedSGD from the runtime,
its zero_grad and clipping rules, DDP options, torch_npu's GradScaler with the static scale) while gloo carries
the traffic.
The stand-in raises on ``zero_grad(set_to_none=True)`` and on gradients DDP re-points, as torch_npu
would fail or go wrong there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from stand_ins import torch_npu as npu_stand_in

from solo_npu import runtime
from solo_npu.runtime import DeviceInfo

STEPS = 3


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _npu_job(cfg: dict[str, Any], run_dir: Path, info: DeviceInfo) -> dict[str, Any]:
    """Worker: the stand-in torch_npu, then the training job on an NPU-kind device in host memory."""
    from solo_npu.engine import comm
    from solo_npu.engine.job import run_job

    npu_stand_in.install()
    summary = run_job(cfg, run_dir, DeviceInfo("npu", torch.device("cpu"), info.index))
    optimizers = npu_stand_in.FUSED_OPTIMIZERS
    report = {"fused_optimizers": len(optimizers), "calls": dict(optimizers[-1].calls) if optimizers else {},
              "scaler": _name(runtime.grad_scaler_class("npu"))}
    (run_dir / f"stand_in_rank{comm.get_rank()}.json").write_text(json.dumps(report))
    return summary


def test_8p_experiment_first_steps_with_fused_sgd(synthetic_coco: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_support import compose_train_cfg

    from solo_npu.engine.launch import launch

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = compose_train_cfg(["+experiment=[smoke,8p]", f"data.root={synthetic_coco}", "data.generate=false",
                             "launcher.nproc_per_node=2", f"train.max_iters={STEPS}", "train.log_interval=1",
                             "train.plots=false", "train.eval_interval=0", "train.eval_at_end=false",
                             "data.pin_memory=false"])  # host memory: nothing to pin
    # The recipe as conf/experiment/8p.yaml ships it.
    assert cfg.optim.fused is True and cfg.optim.name == "sgd"
    assert (cfg.amp.enabled, cfg.amp.dtype, float(cfg.amp.loss_scale)) == (True, "fp16", 128.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launch(_npu_job, OmegaConf.to_container(cfg, resolve=True), run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["device"]) == ("ok", 2, "npu")
    assert summary["iterations"] == STEPS and summary["nonfinite_total"] == 0
    assert summary["ranks_in_sync"] is True  # the fused steps saw the all-reduced gradients on both ranks
    assert math.isfinite(summary["final_loss"])
    for rank in (0, 1):
        report = json.loads((run_dir / f"stand_in_rank{rank}.json").read_text())
        assert report["fused_optimizers"] == 1
        assert report["scaler"] == _name(npu_stand_in.GradScaler)  # torch_npu's, on every torch
        # One zero_grad (never set_to_none), one fused clip after unscale_, one fused step per iteration.
        assert report["calls"] == {"zero_grad": STEPS, "clip_grad_norm_fused_": STEPS, "step": STEPS}
