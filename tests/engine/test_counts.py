"""Counts that reach summary.json: data faults summed over DataLoader workers and ranks, per-epoch step counters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from solo_npu.data import FAULT_KINDS, READ_FAULTS, CocoInstanceDataset, build_dataloader, build_dataset, stop_workers
from solo_npu.data.synthetic import generate_synthetic_coco
from solo_npu.engine import comm
from solo_npu.engine.hooks import CountsHook, HookBase
from solo_npu.engine.trainer import Trainer
from solo_npu.runtime import resolve_device
from tests.conftest import synthetic_data_cfg

EPOCHS, BATCH = 2, 2


def _faulty_root(tmp_path: Path) -> Path:
    """Eight training images: image 1 truncated (unreadable), two orphan annotations, one duplicate id."""
    root = generate_synthetic_coco(tmp_path / "faulty", 8, 2, size=64, seed=1)
    png = root / "train2017" / "000000000001.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    first = data["annotations"][0]
    data["annotations"] += [{**first, "id": 9100, "image_id": 90}, {**first, "id": 9101, "image_id": 91}, dict(first)]
    ann_file.write_text(json.dumps(data))
    return root


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss_x": (images.float().mean() * self.w) ** 2}


class _ReportsCounter(HookBase):
    """Stands for a model whose step reports ``dropped_positives``: this rank's count, ``rank + 1`` per step."""

    def __init__(self, per_step: int) -> None:
        self.per_step = per_step

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("dropped_positives", float(self.per_step))


def _requests_of_index_0(loader: DataLoader) -> int:
    """How often the sampler asks for index 0 (the truncated image) over the run: each request reads it once."""
    n = 0
    for epoch in range(EPOCHS):
        loader.batch_sampler.set_epoch(epoch, 0)
        n += sum((k[0] if isinstance(k, tuple) else k) == 0 for batch in loader.batch_sampler for k in batch)
    return n


def _train(root: Path, rank: int, world: int, workers: int) -> dict:
    cfg = synthetic_data_cfg(root, num_workers=workers)
    train_set = build_dataset(cfg, "train")
    loader = build_dataloader(cfg, "train", batch_size=BATCH, distributed=world > 1, rank=rank, world_size=world,
                              num_workers=workers, dataset=train_set)
    expected_reads = _requests_of_index_0(loader)
    model = _Tiny()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader, resolve_device("cpu"),
                      max_epochs=EPOCHS, iters_per_epoch=len(loader.batch_sampler), batch_size=BATCH, grad_clip=None)
    counts = CountsHook({"train": train_set})
    trainer.register_hooks([_ReportsCounter(rank + 1), counts])
    trainer.train()
    stop_workers(loader)  # as job.train does before the process group is torn down
    return {"summary": counts.summary(), "expected_reads": expected_reads, "iters": len(loader.batch_sampler)}


def test_summary_sums_faults_over_two_workers_and_counters_per_epoch(tmp_path: Path) -> None:
    out = _train(_faulty_root(tmp_path), 0, 1, workers=2)
    faults = out["summary"]["data_faults"]["train"]
    assert set(faults) == set(FAULT_KINDS)
    assert faults["orphan_annotation"] == 2 and faults["duplicate_annotation_id"] == 1
    assert faults["unreadable_image"] == out["expected_reads"] >= EPOCHS  # every epoch requests every image
    iters = out["iters"]
    assert out["summary"]["epoch_counts"] == [{"epoch": e, "iterations": iters, "dropped_positives": iters}
                                              for e in (1, 2)]
    json.dumps(out["summary"])  # what summary.json will hold


def test_concurrent_workers_lose_no_count(tmp_path: Path) -> None:
    """Evaluation keeps unreadable images (blank, counted per read): 6 unreadable of 8, read 4 times by 2 workers."""
    root = generate_synthetic_coco(tmp_path / "broken", 0, 8, size=64, seed=2)
    for i in range(1, 7):
        (root / "val2017" / f"{i:012d}.png").write_bytes(b"not a png")
    ds = CocoInstanceDataset(root / "annotations" / "instances_val2017.json", root / "val2017", train=False)
    loader = DataLoader(ds, batch_size=None, sampler=list(range(len(ds))) * 4, num_workers=2, collate_fn=lambda s: s)
    assert sum(not s["meta"]["image_ok"] for s in loader) == 24
    assert ds.fault_counts()["unreadable_image"] == 24


def _rank(rank: int, world: int, init_file: str, root: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A spawned rank would spawn its DataLoader workers too (each importing torch again: 10+ s on 2 cores);
    # the workers' shared counters are the same either way.
    mp.set_start_method("fork", force=True)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = _train(Path(root), rank, world, workers=2)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))
        dist.barrier()  # as the launcher does before destroy_process_group
    finally:
        comm.destroy_process_group()  # the launcher's teardown


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_ranks_sum_read_faults_and_counters_but_not_annotation_faults(tmp_path: Path) -> None:
    root = _faulty_root(tmp_path)
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(root), str(tmp_path)), nprocs=2, join=True)
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert outs[0]["summary"] == outs[1]["summary"]  # gathered: every rank holds the totals
    faults = outs[0]["summary"]["data_faults"]["train"]
    # Every rank scanned the same json: its annotation faults are counted once, not once per rank.
    assert faults["orphan_annotation"] == 2 and faults["duplicate_annotation_id"] == 1
    assert faults["unreadable_image"] == sum(o["expected_reads"] for o in outs) > 0
    assert all(faults[k] == 0 for k in READ_FAULTS if k != "unreadable_image")
    iters = outs[0]["iters"]
    assert outs[0]["summary"]["epoch_counts"] == [{"epoch": e, "iterations": iters, "dropped_positives": 3 * iters}
                                                  for e in (1, 2)]  # rank 0 reports 1, rank 1 reports 2 per step


def test_training_summary_json_carries_fault_counts_summed_over_two_workers(smoke_data: list[str],
                                                                            tmp_path: Path) -> None:
    from engine_support import run_train

    root = _faulty_root(tmp_path)
    summary = run_train([f"data.root={root}", "data.generate=false", "data.num_workers=2", "train.epochs=2",
                         "train.eval_interval=0", "train.vis_images=0", "train.plots=false"], tmp_path / "run")
    train_faults, val_faults = summary["data_faults"]["train"], summary["data_faults"]["val"]
    assert train_faults["orphan_annotation"] == 2 and train_faults["duplicate_annotation_id"] == 1
    # 8 training images, batch 2, one process: each epoch requests image 1 (index 0) exactly once.
    assert train_faults["unreadable_image"] == 2
    assert set(val_faults) == set(FAULT_KINDS) and not any(val_faults.values())
    # The model reports dropped_positives at every step; the summary keeps one sum per epoch (4 steps each).
    assert [(e["epoch"], e["iterations"]) for e in summary["epoch_counts"]] == [(1, 4), (2, 4)]
    assert all(isinstance(e["dropped_positives"], int) and e["dropped_positives"] >= 0 for e in summary["epoch_counts"])
