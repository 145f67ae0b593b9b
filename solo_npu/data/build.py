"""Dataset and DataLoader builders from the ``data`` config group (conf/data/*.yaml).

``train.img_dir`` / ``train.ann_file`` (and ``val.*``) are relative to ``data.root`` unless absolute;
``data.root`` itself is relative to the launch directory (Hydra does not chdir).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from solo_npu.data.coco import DEFAULT_MIN_SIZE, CocoInstanceDataset
from solo_npu.data.collate import SLOT_LADDER, FixedShapeCollate
from solo_npu.data.samplers import GroupedBatchSampler
from solo_npu.data.transforms import build_transforms, canvas_size, rescale_size

logger = logging.getLogger("solo_npu.data")
SPLITS = ("train", "val")
STAMP = "synthetic_params.json"  # the generator arguments, to notice a stale dataset


def split_paths(data_cfg: Any, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split; ``ann_file`` and ``img_dir`` are relative to ``data.root``."""
    root = Path(str(data_cfg["root"]))
    sub = data_cfg[split]
    return root / str(sub["ann_file"]), root / str(sub["img_dir"])


class DatasetNotFoundError(FileNotFoundError):
    """A split's annotation file or image folder that does not exist (:func:`check_dataset_files`)."""


def check_dataset_files(data_cfg: Any, splits: Sequence[str]) -> None:
    """Raise a one-line :class:`DatasetNotFoundError` for the first annotation file or image folder of ``splits``
    that does not exist; nothing when ``data.generate`` makes the synthetic set where it is missing."""
    if data_cfg.get("generate", False):
        return
    root = Path(str(data_cfg["root"]))
    where = "" if root.is_absolute() else f", relative to {Path.cwd()}"
    for split in splits:
        ann_file, img_dir = split_paths(data_cfg, split)
        sub = data_cfg[split]
        for key, kind, path, found in (("ann_file", "annotation file", ann_file, ann_file.is_file()),
                                       ("img_dir", "image folder", img_dir, img_dir.is_dir())):
            if not found:
                raise DatasetNotFoundError(
                    f"data.{split}.{key}: {kind} {path} not found (data.root={root}{where}); data.root=PATH names a "
                    f"COCO-layout folder holding {sub['ann_file']} and {sub['img_dir']}/, data=synthetic the "
                    "generated demo set")


def build_dataset(data_cfg: Any, split: str, seed: int = 0,
                  class_names: Sequence[str] | None = None) -> CocoInstanceDataset:
    """The dataset of a split with its transforms (training augmentation only for ``train``).

    Its classes (labels 0..N-1) are ``class_names`` when given (another split's, a checkpoint's), else
    ``data.class_names`` when set, else every category of the annotation file, ids ascending; named classes
    are found in the file by name (:func:`solo_npu.data.coco.category_order`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ann_file, img_dir = split_paths(data_cfg, split)
    train = split == "train"
    if class_names is None and data_cfg.get("class_names") is not None:
        class_names = [str(n) for n in data_cfg.get("class_names")]
    return CocoInstanceDataset(ann_file, img_dir, transforms=build_transforms(data_cfg, train), train=train,
                               max_instances=int(data_cfg.max_instances), seed=seed, class_names=class_names,
                               min_size=int(data_cfg.get("min_size", DEFAULT_MIN_SIZE)))


def build_collate(data_cfg: Any) -> FixedShapeCollate:
    """The fixed-shape collate function for the config's ``pad`` and ``max_instances``."""
    pad = data_cfg.get("pad") or {}
    canvas = pad.get("canvas")
    return FixedShapeCollate(
        max_instances=int(data_cfg.max_instances),
        mode=str(pad.get("mode", "divisor")),
        size_divisor=int(pad.get("size_divisor", 32)),
        canvas=list(canvas) if canvas is not None else None,
        position=str(pad.get("position", "top_left")),
        instance_slots=str(data_cfg.get("instance_slots", "fixed")),
        slot_ladder=[int(r) for r in data_cfg.get("slot_ladder", None) or SLOT_LADDER],
    )


def eval_canvas_groups(data_cfg: Any, dataset: CocoInstanceDataset) -> np.ndarray:
    """Group id per image of an evaluation split: the canvas the image gets on its own.

    An evaluation batch only holds images of one canvas, so no image is padded for a companion and
    every prediction (the SOLOv2 grids span the whole canvas) is the one of a batch of one, as mmdet
    and SOLO evaluate: the AP does not depend on the evaluation batch size.
    """
    pad = data_cfg.get("pad") or {}
    mode, divisor, canvas = str(pad.get("mode", "divisor")), int(pad.get("size_divisor", 32)), pad.get("canvas")
    scale = tuple(int(v) for v in data_cfg.img_scale)
    keys: dict[tuple[int, int], int] = {}
    groups = np.empty(len(dataset), np.int64)
    for i, rec in enumerate(dataset.records):
        shape = rescale_size(int(rec["height"]), int(rec["width"]), scale)
        groups[i] = keys.setdefault(canvas_size([shape], mode, divisor, canvas), len(keys))
    return groups


def _worker_init(worker_id: int) -> None:
    # One torch thread per worker avoids oversubscribing the cores. OpenCV's thread pool is left
    # alone: reconfiguring it (cv2.setNumThreads) in a forked worker can deadlock on the pool state
    # inherited from the parent.
    torch.set_num_threads(1)
    # Ctrl-C in a terminal, and a scheduler's SIGTERM, reach every process of the group: the main process stops
    # after the step in progress (solo_npu.engine.interrupts), which may need more batches, and then ends the
    # workers itself (stop_workers kills one that does not stop); a worker whose main process died ends on its own
    # (the DataLoader's watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _accelerator_present() -> bool:
    # Pinned memory speeds up copies to an accelerator. The NPU counts where torch_npu is imported already: a run
    # on the NPU has imported it (resolve_device, for device npu and auto), and a CPU or CUDA run does not import
    # it here, broken or not.
    from solo_npu.runtime.device import npu_loaded

    try:
        return torch.cuda.is_available() or npu_loaded()
    except Exception:  # a broken accelerator stack must not stop data loading
        return False


def build_dataloader(data_cfg: Any, split: str, *, batch_size: int, distributed: bool = False, rank: int = 0,
                     world_size: int = 1, seed: int = 0, epoch: int = 0, start_iter: int = 0,
                     num_workers: int | None = None, pin_memory: bool | None = None,
                     dataset: CocoInstanceDataset | None = None) -> DataLoader:
    """A DataLoader yielding batch dicts of the architecture contract.

    The batch sampler (``loader.batch_sampler``, a :class:`GroupedBatchSampler`) is shuffled,
    aspect-grouped and padded for ``train``; for ``val`` it is in image order and a batch holds only
    images of one canvas (:func:`eval_canvas_groups`), so the predictions do not depend on the batch
    size. Call
    ``loader.batch_sampler.set_epoch(epoch, start_iter)`` before each epoch; with ``start_iter`` the
    first batches of that epoch are skipped without being loaded.

    Args:
        data_cfg: the ``data`` config node.
        split: ``train`` or ``val``.
        batch_size: images per batch on this rank.
        distributed, rank, world_size: shard the batches across ranks.
        seed: shuffling and augmentation seed (same on every rank).
        epoch, start_iter: the first epoch to iterate and the batches of it to skip.
        num_workers, pin_memory: override ``data.num_workers`` / ``data.pin_memory`` (``null`` in the
            config pins memory when an accelerator is present).
        dataset: reuse an already built dataset.
    """
    train = split == "train"
    if dataset is None:
        ensure_synthetic(data_cfg)
        dataset = build_dataset(data_cfg, split, seed=seed)
    if not distributed:
        rank, world_size = 0, 1
    if train:
        groups = dataset.aspect_flags if bool(data_cfg.get("group_by_aspect_ratio", True)) else None
    else:
        groups = eval_canvas_groups(data_cfg, dataset) if batch_size > 1 else None
    sampler = GroupedBatchSampler(len(dataset), batch_size, groups,
                                  shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                                  epoch=epoch, start_iter=start_iter)
    workers = int(data_cfg.get("num_workers", 0) if num_workers is None else num_workers)
    if pin_memory is None:
        pin_memory = data_cfg.get("pin_memory")
    if pin_memory is None:
        pin_memory = _accelerator_present()
    from solo_npu.runtime.device import pin_memory_kwargs

    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=build_collate(data_cfg),
        num_workers=workers,
        **pin_memory_kwargs(bool(pin_memory)),  # on the NPU with torch 2.1: pin_memory_device="npu"
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def stop_workers(loader: DataLoader) -> None:
    """End a loader's persistent worker processes now rather than whenever the loader is collected.

    A rank must not tear its process group down while they live: workers forked after the group was made
    hold copies of its sockets, and on torch 2.1 gloo's ``destroy_process_group`` then hung now and then
    (2 runs of 25 with two ranks of 2 workers; none of 30 once the workers were ended first). Uses the
    DataLoader's own shutdown (``_iterator._shutdown_workers``, the method its ``__del__`` calls).
    """
    iterator = getattr(loader, "_iterator", None)
    workers = list(getattr(iterator, "_workers", None) or [])
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in workers:  # the shutdown's terminate() does not end a worker that ignores SIGTERM (_worker_init)
        if worker.is_alive():
            logger.warning("data-loader worker %d did not stop; killing it", worker.pid)
            worker.kill()
            worker.join(timeout=5)
    if iterator is not None:
        loader._iterator = None


def _synthetic_complete(root: Path) -> bool:
    return all((root / "annotations" / f"instances_{s}2017.json").is_file() for s in SPLITS)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_SAID: set[tuple[str, str]] = set()  # (root, settings) whose stamp differs, said already


def ensure_synthetic(data_cfg: Any) -> Path:
    """Generate the synthetic dataset at ``data.root`` when ``data.generate`` is true and it is missing.

    Safe to call from every rank at once: a file lock serialises the ranks of a node, and the data is
    written to a temporary directory that is renamed into place, so no reader ever sees half a dataset.
    """
    # imported here: the package does not import the generator, so python -m solo_npu.data.synthetic runs it once
    from solo_npu.data.synthetic import SHAPE_SCALE, generate_synthetic_coco

    root = Path(str(data_cfg.root))
    if not data_cfg.get("generate", False):
        return root
    params: dict[str, Any] = {k: int(data_cfg.get(k, d))
                              for k, d in (("num_train", 96), ("num_val", 24), ("size", 256), ("seed", 0))}
    shape_scale = [float(v) for v in data_cfg.get("shape_scale", None) or SHAPE_SCALE]
    max_shapes = int(data_cfg.get("max_shapes", None) or 6)
    if shape_scale != list(SHAPE_SCALE) or max_shapes != 6:  # the stamp of a default dataset stays as it was
        params.update(shape_scale=shape_scale, max_shapes=max_shapes)
    if _synthetic_complete(root):
        stamp = root / STAMP
        if stamp.is_file() and json.loads(stamp.read_text()) != params and (str(root), str(params)) not in _SAID:
            _SAID.add((str(root), str(params)))  # once per process: each stage and split asks again
            logger.warning("%s was generated with %s, not %s; delete it to regenerate", root, stamp.read_text(), params)
        return root
    with _file_lock(root.parent / f".{root.name}.lock"):
        if _synthetic_complete(root):
            return root
        if root.exists():
            if any(root.iterdir()):
                raise FileExistsError(
                    f"{root} exists but is not a complete dataset; remove it or set data.generate=false")
            root.rmdir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            generate_synthetic_coco(tmp, params["num_train"], params["num_val"], size=params["size"],
                                    seed=params["seed"], shape_scale=tuple(shape_scale), max_shapes=max_shapes)
            (tmp / STAMP).write_text(json.dumps(params))
            os.rename(tmp, root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not _synthetic_complete(root):  # another node won the race otherwise
                raise
        logger.info("generated synthetic dataset at %s", root)
    return root
