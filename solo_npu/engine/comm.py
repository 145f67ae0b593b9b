"""Small helpers over torch.distributed that also work in a single process."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def destroy_process_group() -> None:
    """Tear the default process group down, once gloo's run-loop threads have let go of finished collectives.

    Such a thread may still hold the last reference to a collective's tensors (a barrier's prior work, or the
    collective a failing job issued last) and need the GIL to free their Python objects, while the group's
    destructor holds the GIL and joins that thread: with torch 2.1 that deadlock hangs the rank for good (gdb:
    ``~AsyncAllreduceWork`` waiting in ``take_gil``, ``~ProcessGroupGloo`` in ``thread::join``). Sleeping past the
    interpreter's switch interval first lets the thread take the GIL and finish.
    """
    if not is_dist():
        return
    time.sleep(max(0.05, 10 * sys.getswitchinterval()))
    dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of each scalar tensor over ranks (one collective for the whole dict)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return {k: stacked[i] for i, k in enumerate(keys)}


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics).

    DDP broadcasts rank 0's buffers at the start of each forward, not after the last one: after a training step
    every rank holds statistics of its own batch. An evaluation then scores each rank's shard with other
    statistics than the checkpoint rank 0 saves (mmcv's DistEvalHook broadcasts them first, ``broadcast_bn_buffer``).
    """
    if not is_dist():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def params_in_sync(module: torch.nn.Module) -> bool:
    """True when every rank holds exactly the same parameters (a fingerprint per tensor, compared exactly).

    Buffers are left out: BatchNorm running statistics are updated from each rank's own last batch
    (DDP broadcasts rank 0's buffers at the start of the next forward, not after the last one).
    """
    if not is_dist():
        return True
    tensors = [p.detach() for p in module.parameters()]
    if not tensors:
        return True
    # float64 sums where the device computes them natively; Ascend's AI Cores have next to no float64 (such ops fall
    # back to the AI CPU, if the CANN has them), so on the NPU the sums are float32: equal weights still give equal
    # sums on every rank, as the same kernel reads the same numbers.
    dtype = torch.float32 if tensors[0].device.type == "npu" else torch.float64
    fingerprint = torch.stack([t.to(dtype).sum() for t in tensors] + [t.to(dtype).abs().sum() for t in tensors])
    gathered = [torch.empty_like(fingerprint) for _ in range(get_world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
