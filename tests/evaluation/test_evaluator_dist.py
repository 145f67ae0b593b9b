"""CocoEvaluator across a 2-process gloo group: gathered, deduplicated, identical on every rank; an image
one rank could not use is scored without predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from solo_npu.engine import comm
from solo_npu.evaluation import CocoEvaluator, evaluate_coco, load_coco, results_to_coco


def _predictions(coco, img_id: int, shift: int) -> dict:
    anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
    masks = np.roll(np.stack([coco.annToMask(a) for a in anns]).astype(bool), shift, axis=2)
    cats = sorted(coco.getCatIds())
    return {"masks": masks, "labels": np.array([cats.index(a["category_id"]) for a in anns]),
            "scores": np.linspace(0.9, 0.4, len(anns))}


def _shards(ids: list[int]) -> list[list[int]]:
    half = len(ids) // 2
    return [ids[:half + 1], ids[half:]]  # ids[half] is seen by both ranks, as a padded sampler would


def _worker(rank: int, world_size: int, init_file: str, ann_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        coco = load_coco(ann_file)
        evaluator = CocoEvaluator(coco, sorted(coco.getCatIds()))
        ids = sorted(coco.getImgIds())
        for img_id in _shards(ids)[rank]:
            meta = {"image_id": img_id, "image_ok": img_id != ids[-1]}  # the last image: unreadable
            evaluator.process([meta], [_predictions(coco, img_id, shift=img_id % 3)])
        summary = evaluator.evaluate()
        evaluator.dump(Path(out_dir) / f"results_{rank}.json")
        (Path(out_dir) / f"summary_{rank}.json").write_text(json.dumps(summary))
        dist.barrier()  # as the launcher does: see tests/engine/test_counts.py
    finally:
        comm.destroy_process_group()  # the launcher's teardown


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_rank_gloo_gather_matches_single_process(synthetic_coco, tmp_path):
    ann_file = synthetic_coco / "annotations" / "instances_val2017.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(ann_file), str(tmp_path)), nprocs=2, join=True)
    summaries = [json.loads((tmp_path / f"summary_{r}.json").read_text()) for r in range(2)]
    assert summaries[0] == summaries[1]
    coco = load_coco(ann_file)
    ids = sorted(coco.getImgIds())
    read = ids[:-1]
    reference = evaluate_coco(coco, results_to_coco(
        read, [_predictions(coco, i, shift=i % 3) for i in read], sorted(coco.getCatIds())), img_ids=ids)
    assert summaries[0] == reference and 0.0 < reference["segm"]["AP"] < 1.0
    dumped = json.loads((tmp_path / "results_0.json").read_text())
    assert sorted({d["image_id"] for d in dumped}) == read
    assert len(dumped) == len(coco.getAnnIds(imgIds=read))  # the shared image counted once
