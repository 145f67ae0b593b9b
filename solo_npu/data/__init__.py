"""Data: COCO dataset, transforms, fixed-shape collation, samplers, synthetic data, loader builders."""

from solo_npu.data.build import (
    DatasetNotFoundError,
    build_collate,
    build_dataloader,
    build_dataset,
    check_dataset_files,
    ensure_synthetic,
    split_paths,
    stop_workers,
)
from solo_npu.data.coco import (
    FAULT_KINDS,
    READ_FAULTS,
    AnnotationFileError,
    CocoInstanceDataset,
    load_clean_coco,
    segmentation_to_rle,
)
from solo_npu.data.collate import FixedShapeCollate, pad_instance_slots
from solo_npu.data.samplers import GroupedBatchSampler
from solo_npu.data.transforms import (
    Compose,
    Normalize,
    RandomFlip,
    Resize,
    build_transforms,
    canvas_size,
    pad_offset,
    rescale_size,
)

__all__ = [
    "AnnotationFileError",
    "DatasetNotFoundError",
    "FAULT_KINDS",
    "READ_FAULTS",
    "SYNTHETIC_CATEGORIES",
    "CocoInstanceDataset",
    "Compose",
    "FixedShapeCollate",
    "GroupedBatchSampler",
    "Normalize",
    "RandomFlip",
    "Resize",
    "build_collate",
    "build_dataloader",
    "build_dataset",
    "build_transforms",
    "check_dataset_files",
    "canvas_size",
    "ensure_synthetic",
    "generate_synthetic_coco",
    "pad_instance_slots",
    "split_paths",
    "stop_workers",
    "load_clean_coco",
    "pad_offset",
    "rescale_size",
    "segmentation_to_rle",
]


def __getattr__(name: str):  # the synthetic generator, imported when asked for (python -m solo_npu.data.synthetic
    # runs that module as __main__: imported by the package first, runpy would warn and run a second copy)
    if name in ("SYNTHETIC_CATEGORIES", "generate_synthetic_coco"):
        from solo_npu.data import synthetic

        return synthetic.CATEGORIES if name == "SYNTHETIC_CATEGORIES" else synthetic.generate_synthetic_coco
    raise AttributeError(f"module 'solo_npu.data' has no attribute {name!r}")

