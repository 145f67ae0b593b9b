"""An AMP setting the device runs differently (fp16 on the CPU runs bf16) is a WARNING, not a silent change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import run_train

from solo_npu.runtime import DeviceInfo, amp_notice, autocast

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
