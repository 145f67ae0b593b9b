"""build_dataloader / ensure_synthetic / conf/data configs."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from synthetic_support import synthetic_data_cfg

from solo_npu.data import build_dataloader, build_dataset, ensure_synthetic

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_train_loader_yields_contract_batches_on_a_fixed_canvas(make_synthetic_cfg):
    cfg = make_synthetic_cfg(**{"pad.mode": "fixed", "pad.canvas": [160, 160], "pad.position": "centre"})
    loader = build_dataloader(cfg, "train", batch_size=4, seed=1)
    assert len(loader) == len(list(loader.batch_sampler))
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 3, 160, 160) and batch["images"].dtype == torch.float32
    assert batch["gt_masks"].shape == (4, 8, 160, 160) and batch["gt_labels"].shape == (4, 8)
    assert batch["gt_boxes"].shape == (4, 8, 4) and batch["gt_valid"].dtype == torch.bool
    assert ((batch["gt_labels"] >= 0) == batch["gt_valid"]).all() and batch["gt_labels"].max() <= 2
    # every valid mask lies inside its box and the image area of the canvas
    for i, meta in enumerate(batch["metas"]):
        (top, left), (h, w) = meta["pad"], meta["img_shape"]
        assert meta["canvas"] == (160, 160) and (top, left) == ((160 - h) // 2, (160 - w) // 2)
        assert meta["scale_factor"] == (h / meta["ori_shape"][0], w / meta["ori_shape"][1])
        for k in torch.nonzero(batch["gt_valid"][i]).flatten().tolist():
            ys, xs = torch.nonzero(batch["gt_masks"][i, k], as_tuple=True)
            x1, y1, x2, y2 = batch["gt_boxes"][i, k].tolist()
            assert xs.min() >= x1 - 1 and xs.max() < x2 + 1 and ys.min() >= y1 - 1 and ys.max() < y2 + 1
            assert ys.min() >= top and xs.min() >= left and ys.max() < top + h and xs.max() < left + w


def test_resumed_loader_reproduces_the_rest_of_the_epoch(make_synthetic_cfg):
    cfg = make_synthetic_cfg(multiscale_short=[96, 112, 128])
    full = list(build_dataloader(cfg, "train", batch_size=2, seed=4, epoch=1))
    resumed = build_dataloader(cfg, "train", batch_size=2, seed=4, epoch=1, start_iter=5)
    tail = list(resumed)
    assert len(tail) == len(full) - 5
    for a, b in zip(full[5:], tail):
        assert [m["image_id"] for m in a["metas"]] == [m["image_id"] for m in b["metas"]]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["gt_masks"], b["gt_masks"])
    resumed.batch_sampler.set_epoch(2)
    assert len(resumed) == len(full)


def test_val_loader_shards_cover_the_split_once(make_synthetic_cfg):
    cfg = make_synthetic_cfg()
    ids = [[m["image_id"] for b in build_dataloader(cfg, "val", batch_size=3, distributed=True, rank=r,
                                                    world_size=2) for m in b["metas"]] for r in range(2)]
    assert sorted(ids[0] + ids[1]) == list(range(1, 9)) and not set(ids[0]) & set(ids[1])
    batch = next(iter(build_dataloader(cfg, "val", batch_size=2)))
    assert "gt_masks" not in batch and not any(m["flip"] for m in batch["metas"])


def test_ensure_synthetic_generates_once_under_concurrency(tmp_path, caplog):
    # 48 px: training leaves out images whose shorter side is under 32 px (CocoInstanceDataset.min_size, as mmdet)
    cfg = synthetic_data_cfg(tmp_path / "gen", generate=True, num_train=2, num_val=1, size=48)
    with caplog.at_level(logging.INFO, logger="solo_npu.data"):
        threads = [threading.Thread(target=ensure_synthetic, args=(cfg,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum("generated synthetic" in r.getMessage() for r in caplog.records) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gen.lock", "gen"]  # no temporary left over
    assert len(build_dataset(cfg, "train")) == 2
    with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
        ensure_synthetic(synthetic_data_cfg(tmp_path / "gen", generate=True, num_train=5, num_val=1, size=48))
    assert "delete it to regenerate" in caplog.text and len(build_dataset(cfg, "train")) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "junk").write_text("x")
    with pytest.raises(FileExistsError, match="not a complete dataset"):
        ensure_synthetic(synthetic_data_cfg(tmp_path / "bad", generate=True))


def test_config_files_share_keys_and_coco_defaults():
    syn, coco = OmegaConf.load(CONF / "synthetic.yaml"), OmegaConf.load(CONF / "coco.yaml")
    assert set(coco) <= set(syn) and set(syn) - set(coco) == {"num_train", "num_val", "size", "seed",
                                                          "shape_scale", "max_shapes"}
    assert coco.root == "data/coco" and coco.num_classes == 80 and list(coco.img_scale) == [1333, 800]
    assert coco.normalize.style == "pytorch" and coco.max_instances == 100 and coco.generate is False
    assert syn.num_classes == len(syn.class_names) == 3 and syn.generate is True
    with pytest.raises(Exception, match="not_a_key"):  # struct mode names the unknown key
        OmegaConf.update(synthetic_data_cfg("x"), "not_a_key", 1, merge=True)


def test_hydra_composes_the_data_group_with_overrides():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+data=synthetic", "data.pad.mode=fixed",
                                                   "data.pad.canvas=[320,320]", "data.multiscale_short=[192,256]"])
        assert cfg.data.pad.canvas == [320, 320] and cfg.data.name == "synthetic"
        with pytest.raises(Exception, match="not_a_key"):
            compose(config_name=None, overrides=["+data=coco", "data.not_a_key=1"])


def test_batches_do_not_depend_on_worker_count_across_epochs(make_synthetic_cfg):
    cfg = make_synthetic_cfg(multiscale_short=[96, 128])
    loaders = [build_dataloader(cfg, "train", batch_size=4, seed=2, num_workers=w) for w in (0, 2)]
    for epoch in (0, 1):  # the second epoch reuses the persistent workers
        runs = []
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
            runs.append(list(loader))
        assert len(runs[0]) == len(runs[1]) == len(loaders[0].batch_sampler) > 0
        for a, b in zip(*runs):
            assert a["metas"] == b["metas"] and torch.equal(a["images"], b["images"])
            assert torch.equal(a["gt_masks"], b["gt_masks"]) and torch.equal(a["gt_boxes"], b["gt_boxes"])
    assert loaders[1].persistent_workers


def test_stop_workers_ends_the_persistent_workers_and_the_loader_still_works(make_synthetic_cfg):
    import multiprocessing

    from solo_npu.data import stop_workers

    cfg = make_synthetic_cfg()
    loader = build_dataloader(cfg, "train", batch_size=4, seed=2, num_workers=2)
    before = set(multiprocessing.active_children())
    first = [b["metas"] for b in loader]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2 and all(w.is_alive() for w in workers)  # persistent: alive after the epoch
    stop_workers(loader)
    assert not any(w.is_alive() for w in workers)
    stop_workers(loader)  # nothing left to stop
    assert [b["metas"] for b in loader] == first  # a new iterator starts new workers: the same batches
    stop_workers(loader)
    stop_workers(build_dataloader(cfg, "train", batch_size=4, seed=2, num_workers=0))  # no workers at all


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_workers_keep_serving_after_a_terminal_signal(make_synthetic_cfg, signum: int) -> None:
    """Ctrl-C in a terminal (or SIGTERM to the process group) reaches the loader's workers too; the trainer
    stops after the step in progress, so the workers must go on delivering its batches rather than exit."""
    cfg = make_synthetic_cfg(num_workers=1)
    loader = build_dataloader(cfg, "train", batch_size=1, seed=0)
    it = iter(loader)
    first = next(it)
    for w in it._workers:
        os.kill(w.pid, signum)
    rest = list(it)  # a worker that died would make this raise "DataLoader worker ... exited unexpectedly"
    assert len(rest) + 1 == len(loader) and first["images"].shape[0] == 1


class _StuckAfterFirst:
    """The synthetic set, except that every item after the first never returns (a worker stuck in I/O)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if key[0] != 0:
            time.sleep(3600)
        return self.dataset[key]

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def test_stop_workers_kills_a_stuck_worker_that_ignores_sigterm(make_synthetic_cfg,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers ignore SIGTERM (the step in progress needs them), so the DataLoader's terminate() cannot end a
    stuck one; stop_workers kills it instead of leaving the process to hang at exit."""
    import torch.utils.data._utils as loader_utils

    from solo_npu.data import build_dataset, stop_workers

    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.5)  # the shutdown's join timeout (5 s)
    cfg = make_synthetic_cfg(num_workers=1)
    loader = build_dataloader(cfg, "train", batch_size=1, seed=0,
                              dataset=_StuckAfterFirst(build_dataset(cfg, "train", seed=0)))
    it = iter(loader)
    assert loader._iterator is it  # persistent workers: the loader keeps the iterator
    (worker,) = it._workers
    time.sleep(0.5)  # the worker is now inside a stuck item
    t0 = time.time()
    stop_workers(loader)
    assert not worker.is_alive() and worker.exitcode == -signal.SIGKILL
    assert time.time() - t0 < 30
