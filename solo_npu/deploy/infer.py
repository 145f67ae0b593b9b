"""Infer stage: run every backend of ``deploy.backends`` x batch size over the preprocessed inputs.

All backends write the same layout, ais_bench's, so one postprocess serves them all::

    infer/<backend>_b<B>/<stem>_<i>.bin     raw output i of one image (no batch axis)
    infer/<backend>_b<B>/outputs.json       backend, device, timing scope, batch size, output specs, stems

Each backend object (:mod:`solo_npu.deploy.backends`) says whether it can run and runs the files its way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.deploy import om
from solo_npu.deploy.backends import batches, build_backends, padded, write_image_outputs, write_outputs_info
from solo_npu.deploy.context import DeployContext, write_json
from solo_npu.deploy.export import load_manifest
from solo_npu.deploy.preprocess import load_index

logger = logging.getLogger(__name__)

__all__ = ["batches", "infer_dir", "padded", "read_image_outputs", "run_infer", "write_image_outputs"]


def infer_dir(ctx: DeployContext, backend: str, batch_size: int) -> Path:
    return ctx.path("infer", f"{backend}_b{batch_size}")


def read_image_outputs(out_dir: Path, stem: str, names: Sequence[str],
                       specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    batched = om.read_output_files(out_dir, stem, names, specs, batch_size=1)
    return {name: arr[0] for name, arr in batched.items()}


def run_infer(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    records = load_index(ctx)["images"]
    summary: dict[str, Any] = {}
    for backend in build_backends(ctx):
        for bs in ctx.settings.batch_sizes:
            why = backend.unavailable(bs)
            if why is not None:
                logger.warning("%s batch %d: %s, skipped", backend.name, bs, why)
                continue
            out_dir = infer_dir(ctx, backend.name, bs)
            seconds = backend.run_records(records, bs, out_dir, manifest)
            write_outputs_info(ctx, backend, bs, out_dir, records, manifest, seconds)
            summary[f"{backend.name}_b{bs}"] = {"images": len(records), "seconds": seconds,
                                                "timing": backend.timing_scope, "device": backend.device}
            logger.info("infer %s batch %d: %d images in %.2f s (%s)", backend.name, bs, len(records), seconds,
                        backend.timing_scope)
    write_json(ctx.path("infer", "summary.json"), summary)
    return summary
