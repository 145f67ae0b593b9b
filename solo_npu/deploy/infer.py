"""Infer stage: run every available backend x batch size over the preprocessed inputs.

All backends write the same layout, ais_bench's, so one postprocess serves them all::

    infer/<backend>_b<B>/<stem>_<i>.bin     raw output i of one image (no batch axis)
    infer/<backend>_b<B>/outputs.json       backend, batch size, output names/shapes/dtypes, stems
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.deploy import om
from solo_npu.deploy.context import BACKENDS, DeployContext, DeployError, read_json, write_json
from solo_npu.deploy.export import exported_file, load_manifest
from solo_npu.deploy.preprocess import load_index, load_inputs
from solo_npu.deploy.runners import (
    OnnxRuntimeRunner,
    PyTorchRunner,
    Runner,
    TorchAieRunner,
    TorchScriptRunner,
)

logger = logging.getLogger(__name__)



def infer_dir(ctx: DeployContext, backend: str, batch_size: int) -> Path:
    return ctx.path("infer", f"{backend}_b{batch_size}")


def compiled_file(ctx: DeployContext, kind: str, batch_size: int | str) -> str | None:
    path = ctx.path("compile", "compile.json")
    if not path.is_file():
        return None
    return (read_json(path).get(kind) or {}).get(str(batch_size))


def make_runner(ctx: DeployContext, backend: str, batch_size: int, manifest: Mapping[str, Any]) -> Runner | None:
    """The runner for one backend and batch size; None (with one log line) when it is not available."""
    names = ctx.adapter.output_names
    if backend == "pytorch":
        return PyTorchRunner(ctx.adapter.export_module(ctx.model()), names, ctx.device)
    if backend == "torchscript":
        path = exported_file(manifest, "torchscript", batch_size)
        return TorchScriptRunner(path, names, ctx.device) if path else _skip(backend, batch_size, "not exported")
    if backend == "onnxruntime":
        path = exported_file(manifest, "onnx", batch_size)
        if not path:
            return _skip(backend, batch_size, "not exported")
        return OnnxRuntimeRunner(path, names, ctx.device, ctx.deploy_cfg.get("onnxruntime"))
    if backend == "torch_aie":
        path = compiled_file(ctx, "torch_aie", batch_size)
        return TorchAieRunner(path, names, ctx.device) if path else _skip(backend, batch_size, "not compiled")
    raise DeployError(f"unknown backend {backend!r}: use any of {', '.join(BACKENDS)}")


def _skip(backend: str, batch_size: int, why: str) -> None:
    logger.warning("%s batch %d: %s, skipped", backend, batch_size, why)
    return None


def batches(num: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, num))) for s in range(0, num, batch_size)]


def padded(members: Sequence[int], batch_size: int) -> list[int]:
    """Fill a short last batch by repeating its last image (static-shape models need full batches)."""
    return list(members) + [members[-1]] * (batch_size - len(members))


def write_image_outputs(out_dir: Path, stem: str, outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    for i, name in enumerate(names):
        np.ascontiguousarray(outputs[name]).tofile(out_dir / f"{stem}_{i}.bin")


def read_image_outputs(out_dir: Path, stem: str, names: Sequence[str],
                       specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    batched = om.read_output_files(out_dir, stem, names, specs, batch_size=1)
    return {name: arr[0] for name, arr in batched.items()}


def run_backend(ctx: DeployContext, runner: Runner, records: Sequence[Mapping[str, Any]], batch_size: int,
                out_dir: Path) -> float:
    """Run ``runner`` over all records, write per-image outputs; returns model seconds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for members in batches(len(records), batch_size):
        images = load_inputs(ctx, [records[i] for i in padded(members, batch_size)])
        start = time.perf_counter()
        outputs = runner(images)
        seconds += time.perf_counter() - start
        for j, i in enumerate(members):
            write_image_outputs(out_dir, records[i]["stem"], {n: a[j] for n, a in outputs.items()},
                                runner.output_names)
    return seconds


def run_om(ctx: DeployContext, records: Sequence[Mapping[str, Any]], batch_size: int, out_dir: Path,
           manifest: Mapping[str, Any]) -> float | None:
    """ais_bench over the preprocessed bins (batched files for B > 1); None when om is not available."""
    om_cfg = ctx.deploy_cfg.get("om") or {}
    om_path = compiled_file(ctx, "om", batch_size)
    extra_args = list(om_cfg.get("extra_args") or [])
    if not om_path and compiled_file(ctx, "om", "dynamic"):  # one .om with ATC batch gears
        om_path, extra_args = compiled_file(ctx, "om", "dynamic"), [*extra_args, "--dymBatch", str(batch_size)]
    launcher = om.ais_bench_launcher(om_cfg.get("launcher"))
    if not om_path:
        return _skip("om", batch_size, "no .om model (see compile_310p.sh in the run dir)")
    if not om.ais_bench_available(launcher):
        return _skip("om", batch_size, f"ais_bench not available ({' '.join(launcher)}); install the ais_bench wheel")
    bins = [ctx.run_dir / r["bin"] for r in records]
    raw = ctx.path("infer", f"om_b{batch_size}_raw")
    if batch_size == 1:
        input_dir, groups = ctx.path("preprocess", "bins"), [[i] for i in range(len(records))]
        basenames = [om.output_name(r["bin"]) for r in records]
        if len(set(basenames)) != len(basenames):
            raise DeployError("ais_bench names outputs by the input file name up to its first dot, and two "
                              "preprocessed files share that prefix; rename the images so their stems differ")
    else:
        input_dir = ctx.path("infer", f"om_b{batch_size}_inputs")
        groups = om.write_batched_inputs(bins, batch_size, input_dir)
        basenames = [f"batch_{j:05d}" for j in range(len(groups))]
    cmd = om.ais_bench_command(launcher, om_path, raw, "out", input_dir, batch_size=batch_size,
                               device_id=ctx.device.index, extra_args=extra_args)
    start = time.perf_counter()
    om.run_ais_bench(cmd, om_cfg.get("timeout_s"))
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ctx.adapter.output_names
    for basename, members in zip(basenames, groups):
        outputs = om.read_output_files(raw / "out", basename, names, manifest["outputs"], batch_size)
        for j, i in enumerate(members):
            write_image_outputs(out_dir, records[i]["stem"], {n: a[j] for n, a in outputs.items()}, names)
    return seconds


def run_infer(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    records = load_index(ctx)["images"]
    summary: dict[str, Any] = {}
    for backend in ctx.settings.backends:
        for bs in ctx.settings.batch_sizes:
            out_dir = infer_dir(ctx, backend, bs)
            if backend == "om":
                seconds = run_om(ctx, records, bs, out_dir, manifest)
            else:
                runner = make_runner(ctx, backend, bs, manifest)
                seconds = None if runner is None else run_backend(ctx, runner, records, bs, out_dir)
            if seconds is None:
                continue
            write_json(out_dir / "outputs.json", {
                "backend": backend, "batch_size": bs, "output_names": list(ctx.adapter.output_names),
                "outputs": manifest["outputs"], "stems": [r["stem"] for r in records], "seconds": seconds})
            summary[f"{backend}_b{bs}"] = {"images": len(records), "seconds": seconds}
            logger.info("infer %s batch %d: %d images in %.2f s", backend, bs, len(records), seconds)
    write_json(ctx.path("infer", "summary.json"), summary)
    return summary
