"""Disk plan: what a deploy run will write, estimated before it writes it, and the free-space check.

The large parts are the preprocessed inputs (float32 ``3xHxW`` per image) and the raw outputs (the output
contract per image: SOLOv2 at 800x1216 writes 24.3 MB of masks per image). The infer stage runs the
batch sizes of ``deploy.infer.batch_sizes`` only and, unless ``deploy.infer.keep_raw`` is set, turns each
backend's raw outputs into COCO results and deletes them before the next backend runs; so the peak is

    inputs + export/compile files + verify files + all COCO results + the largest single backend run

where one backend run holds its raw outputs (om at a batch size above 1 also holds its batched copy of the
inputs and ais_bench's batched outputs until they are split). With ``keep_raw`` every backend run stays.
COCO results are counted with a fixed allowance per detection slot (:data:`RESULT_BYTES`), an upper bound
for masks as compact as COCO's RLE makes them; everything else is exact arithmetic on shapes.

``stages=[plan]`` prints the estimate and writes ``plan.json`` without running anything; before
preprocess or infer the pipeline compares it with ``shutil.disk_usage(run_dir).free`` and refuses in one
line when it does not fit (``deploy.disk.check=false``: a WARNING).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.deploy.context import DeployContext, DeployError, read_json, run_key, write_json
from solo_npu.deploy.infer import infer_batch_sizes, keep_raw

logger = logging.getLogger(__name__)

FLOAT32 = 4
META_BYTES = 2048  # per image: meta/<stem>.json and its records in dataset.info, meta.info, index.json (which
#                   repeat the run-dir path: measured 1152 bytes with a 60-character one)
# Per detection slot in the COCO results json: an entry with a bbox, plus an RLE string for mask models.
RESULT_BYTES = {"bbox": 192, "segm": 4096}
DEFAULT_DETECTIONS = 200  # slots per image when the contract has no "scores" output (SSD keeps 200 per image)
GB = 1e9


def per_image_bytes(specs: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of one image's raw outputs: the product of each output's per-image shape times its item size."""
    return sum(int(np.prod(s["shape"], dtype=np.int64)) * np.dtype(s["dtype"]).itemsize for s in specs.values())


def detection_slots(specs: Mapping[str, Mapping[str, Any]]) -> int:
    """Detections one image can yield: the size of the ``scores`` output, else :data:`DEFAULT_DETECTIONS`."""
    scores = specs.get("scores")
    return int(np.prod(scores["shape"], dtype=np.int64)) if scores else DEFAULT_DETECTIONS


@dataclass
class DiskEstimate:
    """Bytes a run writes. ``parts`` stay on disk; each ``runs`` entry (one backend x batch size of infer)
    is on disk only while that backend runs, unless ``keep_raw``."""

    num_images: int
    input_bytes: int              # one preprocessed image
    output_bytes: int             # one image's raw outputs
    parts: dict[str, int]
    runs: dict[str, int] = field(default_factory=dict)
    keep_raw: bool = False

    @property
    def raw_peak(self) -> int:
        return sum(self.runs.values()) if self.keep_raw else max(self.runs.values(), default=0)

    @property
    def peak(self) -> int:
        return sum(self.parts.values()) + self.raw_peak

    def to_json(self) -> dict[str, Any]:
        return {"num_images": self.num_images, "input_bytes": self.input_bytes, "output_bytes": self.output_bytes,
                "parts": self.parts, "runs": self.runs, "keep_raw": self.keep_raw, "raw_peak": self.raw_peak,
                "peak": self.peak}

    def lines(self) -> list[str]:
        how = "all kept (deploy.infer.keep_raw)" if self.keep_raw else \
            "one backend at a time, deleted once they are COCO results"
        rows = [f"  {name:<16}{size / GB:10.2f} GB" for name, size in self.parts.items()]
        rows.append(f"  {'raw outputs':<16}{self.raw_peak / GB:10.2f} GB  {how} "
                    f"({self.output_bytes / 1e6:.2f} MB per image; {', '.join(self.runs) or 'no backend'})")
        rows.append(f"  {'peak':<16}{self.peak / GB:10.2f} GB")
        return rows


def estimate_disk(num_images: int, input_shape: Sequence[int], specs: Mapping[str, Mapping[str, Any]],
                  backends: Sequence[str], infer_batch_sizes: Sequence[int], batch_sizes: Sequence[int],
                  iou_types: Sequence[str] = ("bbox",), keep_raw: bool = False, verify_images: int = 0,
                  model_bytes: int = 0, export_files: int = 0) -> DiskEstimate:
    """The disk a run needs, from the output contract and the settings alone (nothing is run).

    Args:
        num_images: images preprocessed and inferred.
        input_shape: ``[H, W]`` or ``[3, H, W]`` of the static model input (float32).
        specs: per-image output shapes and dtypes (the export manifest's ``outputs``).
        backends: ``deploy.backends``; ``infer_batch_sizes``: the batch sizes infer runs over every image;
            ``batch_sizes``: every exported batch size (verify runs each on the verify images).
        iou_types: the adapter's; ``segm`` gets the RLE allowance per detection.
        keep_raw: raw outputs stay after they became COCO results.
        verify_images: ``deploy.verify.num_images`` (0 when verify does not run).
        model_bytes, export_files: size of one exported/compiled model and how many files of that size.
    """
    h, w = int(input_shape[-2]), int(input_shape[-1])
    input_bytes = 3 * h * w * FLOAT32
    output_bytes = per_image_bytes(specs)
    per_detection = RESULT_BYTES["segm" if "segm" in iou_types else "bbox"]
    runs: dict[str, int] = {}
    for backend in backends:
        for bs in infer_batch_sizes:
            padded = math.ceil(num_images / bs) * bs
            raw = num_images * output_bytes
            if backend == "om" and bs > 1:
                # the batched input copy and ais_bench's batched outputs (split, and deleted, batch by batch)
                raw = padded * input_bytes + padded * output_bytes + bs * output_bytes
            runs[run_key(backend, bs)] = raw
    verify = verify_images * input_bytes
    for backend in backends:
        for bs in batch_sizes:
            padded = math.ceil(verify_images / bs) * bs if verify_images else 0
            verify += padded * output_bytes + (padded * input_bytes if backend == "om" and bs > 1 else 0)
    timed = [b for b in backends if b in ("om", "torch_aie")]
    parts = {
        "inputs": num_images * (input_bytes + META_BYTES),
        "COCO results": len(backends) * len(infer_batch_sizes) * num_images * detection_slots(specs) * per_detection,
        "export+compile": model_bytes * export_files,
        "verify": verify,
        "benchmark": sum(bs * (input_bytes + output_bytes) for _ in timed for bs in batch_sizes),
    }
    return DiskEstimate(num_images, input_bytes, output_bytes, parts, runs, keep_raw)


def _planned_images(ctx: DeployContext) -> int:
    """Images the run preprocesses: the preprocess index if written, else the split's annotation file."""
    index = ctx.path("preprocess", "index.json")
    if index.is_file():
        return len(read_json(index)["images"])
    from solo_npu.data.coco import read_annotation_json
    from solo_npu.deploy.preprocess import dataset_files

    data = ctx.cfg.data
    split = str(ctx.deploy_cfg.split)
    ann_file, _ = dataset_files(data, split)
    if ann_file.is_file():
        total = len(read_annotation_json(ann_file)["images"])
    elif data.get("generate") and data.get(f"num_{split}") is not None:  # synthetic data not generated yet
        total = int(data.get(f"num_{split}"))
    else:
        raise DeployError(f"annotation file not found: {ann_file} (set data.root=DIR or data=synthetic)")
    limit = ctx.settings.num_images
    return total if limit is None else min(total, limit)


def _contract(ctx: DeployContext, with_model_bytes: bool) -> tuple[dict[str, Any], int]:
    """Per-image output specs and the byte size of one exported model: the specs from the manifest when
    export ran, else from one batch-1 forward of the export module; the size from the model's tensors."""
    manifest_path = ctx.path("export", "manifest.json")
    specs = read_json(manifest_path).get("outputs") if manifest_path.is_file() else None
    model_bytes = 0
    if with_model_bytes or not specs:
        model = ctx.model()
        model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if not specs:
        from solo_npu.deploy.export import module_device, traced_output_specs

        module = ctx.adapter.export_module(ctx.model())
        specs = traced_output_specs(module, ctx.settings.input_shape, module_device(module), ctx.adapter.output_names)
    return specs, model_bytes


def plan_disk(ctx: DeployContext, stages: Sequence[str] | None = None) -> DiskEstimate:
    """The estimate for this run's settings (``stages``: the stages still to run; all by default)."""
    stages = list(stages) if stages is not None else ["export", "verify", "compile", "preprocess", "infer"]
    specs, model_bytes = _contract(ctx, "export" in stages)
    backends = list(ctx.settings.backends)
    sizes = ctx.settings.export_batch_sizes
    formats = list(ctx.deploy_cfg.export_formats)
    dynamic = 1 if ctx.deploy_cfg.compile.dynamic_batch else 0
    compiled = sum(1 for b in backends if b in ("om", "torch_aie"))
    files = len(sizes) * (len(formats) + compiled) + dynamic * (1 + ("om" in backends))
    verify_images = int(ctx.deploy_cfg.verify.num_images) if ("verify" in stages or "compile" in stages) else 0
    return estimate_disk(_planned_images(ctx), ctx.settings.input_shape, specs, backends, infer_batch_sizes(ctx),
                         sizes, ctx.adapter.iou_types, keep_raw(ctx), verify_images,
                         model_bytes, files)


def still_needed(ctx: DeployContext, estimate: DiskEstimate, stages: Sequence[str]) -> int:
    """Bytes the remaining ``stages`` still write: the inputs are already there when preprocess will not run."""
    needed = estimate.peak
    if "preprocess" not in stages and ctx.path("preprocess", "index.json").is_file():
        needed -= estimate.parts["inputs"]
    return max(0, needed)


def free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(ctx: DeployContext, stages: Sequence[str]) -> DiskEstimate | None:
    """Refuse (one line) when the remaining stages need more than the run dir's free space.

    When the estimate itself cannot be made (no annotation file, no preprocessed inputs) the check is left
    to the stage, whose own one-line error says what is missing.
    """
    try:
        estimate = plan_disk(ctx, stages)
    except DeployError as exc:
        logger.info("disk check skipped: %s", exc)
        return None
    needed = still_needed(ctx, estimate, stages)
    disk = ctx.deploy_cfg.disk
    reserve = int(float(disk.reserve_gb) * GB)
    free = free_bytes(ctx.run_dir)
    if needed + reserve > free:
        message = (f"the run needs about {needed / GB:.1f} GB more disk (inputs {estimate.parts['inputs'] / GB:.1f} GB,"
                   f" raw outputs {estimate.raw_peak / GB:.1f} GB at peak, for {estimate.num_images} images) plus "
                   f"{reserve / GB:.1f} GB reserve, but {ctx.run_dir} has {free / GB:.1f} GB free: free space, use "
                   "run_dir= on a larger disk or fewer images (deploy.num_images=N); stages=[plan] shows the estimate")
        if disk.check:
            raise DeployError(message)
        logger.warning("%s (deploy.disk.check=false: going on)", message)
    else:
        logger.info("disk: about %.2f GB needed, %.1f GB free in %s", needed / GB, free / GB, ctx.run_dir)
    write_json(ctx.path("plan.json"), {**estimate.to_json(), "free": free, "needed": needed})
    return estimate


def run_plan(ctx: DeployContext) -> dict[str, Any]:
    """``stages=[plan]``: print the disk estimate of a full run and write ``plan.json``; runs nothing."""
    estimate = plan_disk(ctx)
    free = free_bytes(ctx.run_dir)
    h, w = ctx.settings.input_shape
    print(f"disk plan: {estimate.num_images} images at 3x{h}x{w}, backends {list(ctx.settings.backends)}, "
          f"batch sizes {ctx.settings.export_batch_sizes} (all images at {infer_batch_sizes(ctx)})")
    print("\n".join(estimate.lines()))
    print(f"  {'free':<16}{free / GB:10.2f} GB  in {ctx.run_dir}")
    data = {**estimate.to_json(), "free": free}
    write_json(ctx.path("plan.json"), data)
    return data
