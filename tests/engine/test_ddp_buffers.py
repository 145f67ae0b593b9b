"""DDP runs without broadcast_buffers (as mmdetection's distributed training): rank 0, whose buffers are saved
and evaluated, ends with the same weights and BatchNorm statistics as with DDP's per-step broadcast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from solo_npu.engine.launch import launch
from solo_npu.runtime import DeviceInfo, ddp_options


def _job(cfg: dict, run_dir: Path, info) -> None:
    import torch.distributed as dist

    rank = dist.get_rank()
    results = {}
    for broadcast in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        options = {**ddp_options(info, opt), "broadcast_buffers": broadcast}
        net = nn.parallel.DistributedDataParallel(model, **options)
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches: its own BN statistics
        for _ in range(4):
            opt.zero_grad()
            net(torch.randn(2, 3, 8, 8, generator=data)).square().mean().backward()
            opt.step()
        results[broadcast] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(results, run_dir / f"rank{rank}.pt")


def test_rank_0_state_is_the_same_without_the_buffer_broadcast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cpu = DeviceInfo("cpu", torch.device("cpu"))
    assert ddp_options(cpu, torch.optim.SGD([torch.zeros(1)], lr=1))["broadcast_buffers"] is False
    launch(_job, {"launcher": {"nproc_per_node": 2, "timeout_min": 2}, "runtime": {"device": "cpu"}}, tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0[True].items():
        torch.testing.assert_close(rank0[False][key], value, rtol=0, atol=0, msg=key)
    # Without the broadcast rank 1 keeps its own statistics (never saved, never evaluated): the test's batches
    # do differ between the ranks, and the weights do not.
    assert not torch.equal(rank1[False]["1.running_mean"], rank0[False]["1.running_mean"])
    torch.testing.assert_close(rank1[False]["0.weight"], rank0[False]["0.weight"], rtol=0, atol=0)
