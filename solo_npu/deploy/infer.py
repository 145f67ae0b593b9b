"""Infer stage: run every backend of ``deploy.backends`` over the preprocessed inputs at the batch sizes of
``deploy.infer.batch_sizes`` (by default only the smallest of ``deploy.batch_sizes``: the other batch sizes
only feed the benchmark timings, which run one batch repeatedly).

All backends write the same layout, ais_bench's, so one postprocess serves them all::

    infer/<backend>_b<B>/<stem>_<i>.bin     raw output i of one image (no batch axis)
    infer/<backend>_b<B>/outputs.json       backend, device, what its seconds cover, batch size, output specs, stems

Raw outputs are large (SOLOv2 at 800x1216: 24.3 MB per image), so unless ``deploy.infer.keep_raw`` is set they
live only until the backend has finished: they are turned into COCO results (``evaluate/<backend>_b<B>.json``,
what the evaluate stage scores) and deleted, so at most one backend's raw outputs are on disk at a time.

Each backend object (:mod:`solo_npu.deploy.backends`) says whether it can run and runs the files its way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.deploy import om
from solo_npu.deploy.backends import batches, build_backends, padded, write_image_outputs, write_outputs_info
from solo_npu.deploy.context import DeployContext, DeployError, read_json, run_key, write_json
from solo_npu.deploy.export import load_manifest
from solo_npu.deploy.preprocess import load_index, metas_of

logger = logging.getLogger(__name__)

__all__ = ["FAILURE_STAGES", "batches", "collect_results", "failed_runs", "failures", "infer_batch_sizes", "infer_dir",
           "padded", "raw_files", "read_image_outputs", "results_path", "run_infer", "write_image_outputs"]


def infer_dir(ctx: DeployContext, backend: str, batch_size: int) -> Path:
    return ctx.path("infer", run_key(backend, batch_size))


def results_path(ctx: DeployContext, key: str) -> Path:
    """The COCO results of ``infer/<key>``: what evaluate scores."""
    return ctx.path("evaluate", f"{key}.json")


def infer_batch_sizes(ctx: DeployContext) -> list[int]:
    """Batch sizes whose outputs are computed for every image and scored (``deploy.infer.batch_sizes``).

    null: the smallest of ``deploy.batch_sizes``; ``all``: every one; a list: those (each must be one of
    ``deploy.batch_sizes``, which are the exported models).
    """
    chosen = ctx.deploy_cfg.infer.batch_sizes
    sizes = list(ctx.settings.batch_sizes)
    if chosen is None:
        return [min(sizes)]
    if isinstance(chosen, str):
        if chosen != "all":
            raise DeployError(f"deploy.infer.batch_sizes={chosen!r}: give null, all or a list such as [1]")
        return sorted(set(sizes))
    picked = sorted({int(b) for b in chosen})
    missing = [b for b in picked if b not in sizes]
    if missing or not picked:
        raise DeployError(f"deploy.infer.batch_sizes={picked}: each must be one of deploy.batch_sizes={sizes}")
    return picked


def keep_raw(ctx: DeployContext) -> bool:
    return bool(ctx.deploy_cfg.infer.keep_raw)


def read_image_outputs(out_dir: Path, stem: str, names: Sequence[str],
                       specs: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    batched = om.read_output_files(out_dir, stem, names, specs, batch_size=1)
    return {name: arr[0] for name, arr in batched.items()}


def raw_files(out_dir: Path, stems: Sequence[str], num_outputs: int) -> list[Path]:
    return [out_dir / f"{stem}_{i}.bin" for stem in stems for i in range(num_outputs)]


def collect_results(ctx: DeployContext, key: str, records: Sequence[Mapping[str, Any]],
                    label_to_cat: Sequence[int]) -> dict[str, Any]:
    """Raw outputs of ``infer/<key>`` -> adapter postprocess -> COCO results json; returns the scored image
    ids, counts and the postprocess time per image. An image whose file could not be used (``image_ok``
    false) is scored with no predictions, its objects missed, as :class:`solo_npu.evaluation.CocoEvaluator`
    scores it for the eager reference."""
    from solo_npu.evaluation.coco_eval import image_id_of, results_to_coco

    out_dir = ctx.path("infer", key)
    info = read_json(out_dir / "outputs.json", f"outputs of {key}", stage="infer")
    by_stem = {r["stem"]: r for r in records}
    entries: list[dict[str, Any]] = []
    image_ids: list[Any] = []
    unusable = 0
    post_seconds = 0.0
    for stem in info["stems"]:
        if stem not in by_stem:
            raise DeployError(f"infer/{key} holds outputs for {stem!r}, which preprocess did not write; re-run infer")
        meta = metas_of([by_stem[stem]])[0]
        image_id = image_id_of(meta["image_id"])
        image_ids.append(image_id)
        if not by_stem[stem].get("image_ok", True):
            unusable += 1
            continue
        outputs = read_image_outputs(out_dir, stem, info["output_names"], info["outputs"])
        start = time.perf_counter()
        result = ctx.adapter.postprocess(outputs, meta)
        post_seconds += time.perf_counter() - start
        entries.extend(results_to_coco([image_id], [result], label_to_cat))
    if unusable:
        logger.warning("%s: %d of the %d images scored could not be read and have no predictions", key, unusable,
                       len(image_ids))
    path = results_path(ctx, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, entries)
    return {"results": str(path.relative_to(ctx.run_dir)), "image_ids": image_ids, "detections": len(entries),
            "without_predictions": unusable,
            "postprocess_ms": 1000 * post_seconds / max(1, len(image_ids) - unusable)}


def run_infer(ctx: DeployContext) -> dict[str, Any]:
    """Run every backend at every infer batch size. A backend that fails (its tool's error, a session it cannot
    create) is logged as an ERROR and recorded as ``{"failed": reason}`` in ``infer/summary.json``; the other
    backends go on, and the run ends with an error after its last stage (:func:`failed_runs`)."""
    manifest = load_manifest(ctx)
    index = load_index(ctx)
    records = index["images"]
    keep = keep_raw(ctx)
    summary: dict[str, Any] = {}
    for backend in build_backends(ctx):
        for bs in infer_batch_sizes(ctx):
            why = backend.unavailable(bs)
            if why is not None:
                logger.warning("%s batch %d: %s, skipped", backend.name, bs, why)
                continue
            key = run_key(backend.name, bs)
            out_dir = infer_dir(ctx, backend.name, bs)
            try:
                summary[key] = _infer_one(ctx, backend, bs, out_dir, records, index, manifest, keep)
            except DeployError as exc:
                (out_dir / "outputs.json").unlink(missing_ok=True)  # evaluate scores nothing of this run
                if not keep:  # nor leaves its raw outputs on the disk the next backend needs
                    for f in raw_files(out_dir, [r["stem"] for r in records], len(ctx.adapter.output_names)):
                        f.unlink(missing_ok=True)
                summary[key] = {"failed": str(exc)}
                logger.error("infer %s batch %d failed: %s; the other backends go on", backend.name, bs, exc)
    write_json(ctx.path("infer", "summary.json"), summary)
    return summary


def _infer_one(ctx: DeployContext, backend: Any, bs: int, out_dir: Path, records: Sequence[Mapping[str, Any]],
               index: Mapping[str, Any], manifest: Mapping[str, Any], keep: bool) -> dict[str, Any]:
    """One backend at one batch size: raw outputs, then (unless kept) COCO results; the summary entry."""
    seconds = backend.run_records(records, bs, out_dir, manifest)
    write_outputs_info(ctx, backend, bs, out_dir, records, manifest, seconds)
    key = run_key(backend.name, bs)
    entry: dict[str, Any] = {"images": len(records), "seconds": seconds, "timing": backend.infer_timing,
                             "device": backend.device}
    if not keep:  # raw outputs -> COCO results, then drop the raw files (the only large part)
        files = raw_files(out_dir, [r["stem"] for r in records], len(ctx.adapter.output_names))
        entry["raw_bytes"] = sum(f.stat().st_size for f in files if f.is_file())
        collected = collect_results(ctx, key, records, index["label_to_cat"])
        for f in files:
            f.unlink(missing_ok=True)
        info = read_json(out_dir / "outputs.json")
        write_json(out_dir / "outputs.json", {**info, "raw_kept": False, **collected})
        entry.update(results=collected["results"], postprocess_ms=collected["postprocess_ms"])
    logger.info("infer %s batch %d: %d images in %.2f s (%s)%s", backend.name, bs, len(records), seconds,
                backend.infer_timing, "" if keep else ", raw outputs turned into COCO results and deleted")
    return entry


# The stages that record a backend's failure and go on with the others, in pipeline order.
FAILURE_STAGES = ("verify", "compile", "infer", "evaluate", "benchmark")


def failures(ctx: DeployContext, stages: Sequence[str] = ("infer", "benchmark")) -> list[tuple[str, str, str]]:
    """``(<backend>_b<B>, stage, reason)`` for each backend run that ``stages`` recorded as failed in their files:
    verify's and compile's verify tables (``verify/verify.json``, ``verify/verify_compiled.json``: a row that could
    not run, or whose detections did not match), ``infer/summary.json``, ``evaluate/metrics.json`` and
    ``benchmark/benchmark.json``; in pipeline order."""
    found: list[tuple[str, str, str]] = []
    for stage in (s for s in FAILURE_STAGES if s in stages):
        if stage in ("verify", "compile"):
            filename = "verify.json" if stage == "verify" else "verify_compiled.json"
            path = ctx.path("verify", filename)
            for row in read_json(path).get("rows", []) if path.is_file() else []:
                if row.get("status", "ok") != "ok":
                    reason = row.get("failed") or (f"{int(row.get('unmatched') or 0)} detection(s) of eager PyTorch "
                                                   f"and this backend unmatched within the tolerances (see "
                                                   f"verify/{filename})")
                    found.append((run_key(row["backend"], row["batch"]), stage, reason))
        elif stage in ("infer", "evaluate"):
            path = ctx.path("infer", "summary.json") if stage == "infer" else ctx.path("evaluate", "metrics.json")
            for key, entry in read_json(path).items() if path.is_file() else []:
                if isinstance(entry, Mapping) and entry.get("failed"):
                    found.append((key, stage, str(entry["failed"])))
        else:
            path = ctx.path("benchmark", "benchmark.json")
            for row in read_json(path).get("rows", []) if path.is_file() else []:
                if row.get("failed"):
                    found.append((run_key(row["backend"], row["batch_size"]), stage, str(row["failed"])))
    return found


def failed_runs(ctx: DeployContext, stages: Sequence[str] = ("infer", "benchmark")) -> list[str]:
    """``"<backend>_b<B> <stage>: <reason>"`` for each of :func:`failures`."""
    return [f"{key} {stage}: {reason}" for key, stage, reason in failures(ctx, stages)]
