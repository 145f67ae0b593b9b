"""Preprocess stage: dataset images -> one float32 ``.bin`` per image plus meta and info files.

The layout follows the Ascend ModelZoo seeds, so ais_bench and our runners read the same files::

    preprocess/bins/<stem>.bin      float32 [3, H, W], resized and padded as the model's Preprocessing says
    preprocess/meta/<stem>.json     image_id, file_name, ori_shape, img_shape, scale_factor, pad, canvas
    preprocess/dataset.info         "<index> <bin path> <W> <H>" per line (benchmark-tool info file)
    preprocess/meta.info            "<index> <bin path> <meta path> <W0> <H0>" per line
    preprocess/index.json           the same records as json, plus the annotation file used

Resizing and normalisation are the data package's transforms (the code training uses); only the
per-image scale differs: every image is fitted into the static model input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from solo_npu.data import AnnotationFileError, CocoInstanceDataset, FixedShapeCollate, ensure_synthetic, split_paths
from solo_npu.data.coco import ImagesNotFoundError
from solo_npu.data.transforms import Compose, Normalize, Resize
from solo_npu.deploy.context import DeployContext, DeployError, read_stage_json, write_json
from solo_npu.utils.files import write_text_atomic

logger = logging.getLogger(__name__)


class FitCanvasResize:
    """Keep-ratio resize so that the image fits the (H, W) canvas, using the data package's Resize."""

    def __init__(self, canvas: Sequence[int]) -> None:
        self.canvas = (int(canvas[0]), int(canvas[1]))

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        hc, wc = self.canvas
        h, w = sample["image"].shape[:2]
        # Resize takes (long, short) limits; pick the pair for which "fits" equals "fits the canvas".
        same_orientation = (h >= w) == (hc >= wc)
        scale = (max(hc, wc), min(hc, wc)) if same_orientation else (min(hc, wc), min(hc, wc))
        return Resize(scale)(sample, rng)


def deploy_transforms(data_cfg: DictConfig | None, canvas: Sequence[int]) -> Compose:
    """Default deploy preprocessing: keep-ratio fit into the canvas, the data config's normalisation."""
    norm = (data_cfg.get("normalize") if data_cfg is not None else None) or {}
    return Compose([FitCanvasResize(canvas), Normalize(norm.get("style", "pytorch"), norm.get("mean"),
                                                       norm.get("std"))])


def dataset_files(data_cfg: DictConfig, split: str = "val") -> tuple[Path, Path]:
    """(annotation file, image directory) of a split; relative paths are under ``data.root``."""
    sub = data_cfg.get(split)
    if sub is None or data_cfg.get("root") is None:
        raise DeployError(f"the data config has no root or {split!r} split "
                          "(use data=coco data.root=DIR or data=synthetic)")
    return split_paths(data_cfg, split)


def build_deploy_dataset(ctx: DeployContext) -> tuple[CocoInstanceDataset, Path]:
    """The evaluation split as a CocoInstanceDataset with the deploy transforms; errors are one line.

    Where the model's classes have names (a checkpoint's, the data config's), its labels are the file's
    categories of those names: label i is scored as the category named as the model's class i, whatever ids
    or order the file gives them, and the file's other categories are not scored.
    """
    split = str(ctx.deploy_cfg.split)
    ensure_synthetic(ctx.cfg.data)
    ann_file, img_dir = dataset_files(ctx.cfg.data, split)
    names = ctx.classes.names
    try:
        transforms = ctx.adapter.transforms(ctx.settings.input_shape) or deploy_transforms(
            ctx.cfg.data, ctx.settings.input_shape)
        dataset = CocoInstanceDataset(ann_file, img_dir, transforms=transforms, train=False, with_masks=False,
                                      class_names=list(names) if names is not None else None)
    except (FileNotFoundError, ImagesNotFoundError) as exc:
        raise DeployError(f"{exc} (set data.root=DIR or data=synthetic)") from exc
    except AnnotationFileError as exc:  # a class of the model that the file does not have
        raise DeployError(f"{exc}: the model's classes are not this dataset's") from exc
    if len(dataset) == 0:
        raise DeployError(f"no images found in {img_dir} for {ann_file}: point data.root at a COCO-layout folder")
    return dataset, ann_file


def collate_canvas(samples: Sequence[dict[str, Any]], canvas: Sequence[int],
                   position: str = "centre") -> tuple[torch.Tensor, list[dict]]:
    """Place samples on the static canvas: images [B, 3, H, W] and metas with pad and canvas."""
    # Ground truth is not needed here; dropping it keeps the collate from truncating (and logging) it.
    bare = [{**s, "masks": None, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
            for s in samples]
    batch = FixedShapeCollate(max_instances=1, mode="fixed", canvas=canvas, position=position)(bare)
    return batch["images"], batch["metas"]


def select_indices(num_available: int, num_images: int | None) -> list[int]:
    return list(range(num_available if num_images is None else min(num_images, num_available)))


def _stem(file_name: str) -> str:
    """The name of an image's preprocessed files: its path without the suffix, ``/`` and ``.`` as ``_``. ais_bench
    names each output after its input file up to the first dot (Ascend/tools ais_bench/infer/io_oprations.py,
    save_tensors_to_file), so ``shot.1.bin`` and ``shot.2.bin`` would both write ``shot_0.bin``."""
    return Path(file_name).with_suffix("").as_posix().replace("/", "_").replace(".", "_")


def run_preprocess(ctx: DeployContext) -> dict[str, Any]:
    dataset, ann_file = build_deploy_dataset(ctx)
    indices = select_indices(len(dataset), ctx.settings.num_images)
    out = ctx.path("preprocess")
    (out / "bins").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    hc, wc = ctx.settings.input_shape
    records, info_lines, meta_lines = [], [], []
    taken: set[str] = set()
    for i, index in enumerate(indices):
        images, metas = collate_canvas([dataset[index]], (hc, wc), ctx.adapter.pad_position)
        meta = _plain(metas[0])
        stem = _stem(meta["file_name"])
        while stem in taken:  # a/b.png and a_b.png, shot.1.png and shot_1.png: one stem each
            stem = f"{stem}_{i}"
        taken.add(stem)
        bin_path, meta_path = out / "bins" / f"{stem}.bin", out / "meta" / f"{stem}.json"
        images[0].numpy().astype(np.float32).tofile(bin_path)
        write_json(meta_path, meta)
        h0, w0 = meta["ori_shape"]
        info_lines.append(f"{i} {bin_path} {wc} {hc}")
        meta_lines.append(f"{i} {bin_path} {meta_path} {w0} {h0}")
        records.append({"stem": stem, "bin": str(bin_path.relative_to(ctx.run_dir)),
                        "meta": str(meta_path.relative_to(ctx.run_dir)), **meta})
    write_text_atomic(out / "dataset.info", "\n".join(info_lines) + "\n")
    write_text_atomic(out / "meta.info", "\n".join(meta_lines) + "\n")
    write_json(out / "index.json", {"ann_file": str(ann_file), "input_shape": [3, hc, wc],
                                    "label_to_cat": list(dataset.label_to_cat), "images": records})
    logger.info("preprocess: %d images -> %s", len(records), out)
    return {"num_images": len(records)}


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: [float(x) if isinstance(x, float) else int(x) for x in v] if isinstance(v, (tuple, list)) else v
            for k, v in meta.items()}


def load_index(ctx: DeployContext) -> dict[str, Any]:
    return read_stage_json(ctx, "preprocess", "index.json", "preprocessed inputs", "are", "use a new run_dir")


def load_inputs(ctx: DeployContext, records: Sequence[dict[str, Any]]) -> np.ndarray:
    """Stack the preprocessed ``.bin`` files of ``records`` into [B, 3, H, W] float32."""
    hc, wc = ctx.settings.input_shape
    arrays = []
    for rec in records:
        path = ctx.run_dir / rec["bin"]
        if not path.is_file():
            raise DeployError(f"preprocessed input {path} is missing (removed since preprocess ran?): re-run "
                              "stages=[preprocess] before this stage")
        data = np.fromfile(path, dtype=np.float32)
        if data.size != 3 * hc * wc:
            raise DeployError(f"{rec['bin']} holds {data.size} floats, expected 3x{hc}x{wc}: re-run preprocess")
        arrays.append(data.reshape(3, hc, wc))
    return np.stack(arrays)


def metas_of(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metas of preprocessed images as ``model.predict`` and :class:`~solo_npu.evaluation.CocoEvaluator` take
    them; ``image_ok`` false (an image file that could not be used) makes the evaluator score the image with no
    predictions, as the backends' results score it."""
    keys = ("image_id", "file_name", "ori_shape", "img_shape", "scale_factor", "pad", "canvas", "flip", "image_ok")
    return [{k: (tuple(r[k]) if isinstance(r[k], list) else r[k]) for k in keys if k in r} for r in records]
