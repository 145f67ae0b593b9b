"""Verify: every backend against eager PyTorch at batch 1, image by image, on real images.

The verify stage checks the exported files (``onnx.checker``, then the in-process backends of ``deploy.backends``:
TorchScript, ONNX Runtime, and eager itself at batch sizes above 1, with the source backend of each compiled one
asked for, :func:`verified_backends`); the compile stage calls
:func:`verify_backends` for what it compiled (om, torch_aie) the same way. Every backend runs over the
same ``verify/inputs/<stem>.bin`` files with its own ``run_records``, so a tool that runs out of process
is checked exactly as it runs in ``infer``.

Two kinds of numbers per backend and batch size:

- the adapter's ``compare`` of raw outputs (SOLOv2: max abs difference of scores and masks over the
  valid top-k slots, label mismatches), reported for diagnosis;
- detections matched after the adapter's ``postprocess``: each reference detection needs a candidate
  of the same label with box IoU (and mask IoU for masks) at least ``iou`` and a score within
  ``score_atol``. Candidates are matched, not compared slot by slot, so near-tied candidates that float
  rounding reorders (FCOS's top-k, SOLOv2's sort) do not fail a correct export. Unmatched detections whose
  score is within ``score_atol`` of the lowest kept score (the score threshold or the top-N cut) are
  allowed to fall on either side of that cut.

A backend passes when every detection is matched. One that cannot run (a TorchScript file this torch cannot load, an
ONNX file ``onnx.checker`` refuses, a runner's error) is one ERROR line and a row whose status is
``failed: <reason>``; the others are still compared. When any backend fails or mismatches, the stage writes its
table and then raises :class:`~solo_npu.deploy.context.BackendFailures`: the pipeline goes on with the later
stages and ends with an error naming each failure. Tolerances come from ``deploy.verify`` for float32
backends and ``deploy.verify.fp16`` for backends compiled to half precision (om with ATC's default
precision mode, torch_aie with ``precision_policy: FP16``, onnxruntime's CANN provider with GE's default).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from solo_npu.config.deploy_schema import VerifyConfig
from solo_npu.deploy import om
from solo_npu.deploy.context import BackendFailures, DeployContext, DeployError, run_key, write_json
from solo_npu.deploy.export import load_manifest
from solo_npu.deploy.preprocess import build_deploy_dataset, collate_canvas, select_indices
from solo_npu.deploy.runners import PyTorchRunner

logger = logging.getLogger(__name__)

def check_onnx(path: str) -> None:
    """onnx.checker on a file; a corrupt or truncated file becomes a one-line DeployError."""
    try:
        onnx.checker.check_model(onnx.load(path))
    except Exception as exc:  # DecodeError, ValidationError, OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeployError(f"corrupt ONNX file {path}: {first} (re-export with stages=[export])") from exc


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table; floats in compact scientific or fixed notation."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2e}" if v and abs(v) < 1e-2 else f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _passes(stats: Mapping[str, float], atol: float, rtol: float = 0.0) -> bool:
    """``*_max_abs <= atol + rtol * *_ref_max`` (the largest reference magnitude, where the adapter reports
    one: raw logits of a deep model are large, and float32 error grows with them) and no ``*_mismatch``."""
    return all(v <= atol + rtol * stats.get(k[: -len("_max_abs")] + "_ref_max", 0.0)
               for k, v in stats.items() if k.endswith("_max_abs")) and all(
        v == 0 for k, v in stats.items() if k.endswith("_mismatch"))


def tolerances(verify: VerifyConfig, precision: str) -> dict[str, float]:
    """Tolerances for a backend's precision: ``deploy.verify`` (fp32) or ``deploy.verify.fp16``; a null
    ``score_atol`` is the same group's ``atol``."""
    group = verify.fp16 if precision == "fp16" else verify
    score_atol = group.atol if group.score_atol is None else group.score_atol
    return {"atol": float(group.atol), "rtol": float(group.rtol), "score_atol": float(score_atol),
            "iou": float(group.iou)}


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [N, 4] x [M, 4] (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), (inter == 0) & (union == 0))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _numpy(dets: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in dets.items()}


def match_detections(reference: Mapping[str, Any], candidate: Mapping[str, Any], iou: float,
                     score_atol: float, score_floor: float | None = None,
                     max_detections: int | None = None) -> dict[str, float]:
    """Greedy matching (reference by descending score) of two postprocessed detection sets.

    A pair matches with the same label, box IoU >= ``iou`` (and mask IoU >= ``iou`` when both have masks)
    and ``|score difference| <= score_atol``; among those the highest box IoU wins. A detection without a
    partner is excused only where the other set may have cut it: its score is at most ``score_floor +
    score_atol`` (a threshold of the postprocess), or the other set holds ``max_detections`` and its score is at
    most the other set's lowest plus ``score_atol``. Returns the numbers of detections, matched pairs, the
    detections without a partner that are not excused (``unmatched``), the largest score difference and the
    smallest IoU of the matched pairs.
    """
    ref, cand = _numpy(reference), _numpy(candidate)
    n, m = len(ref["scores"]), len(cand["scores"])
    pair_iou = _box_iou(ref["boxes"].reshape(-1, 4).astype(np.float64), cand["boxes"].reshape(-1, 4).astype(np.float64))
    masks = "masks" in ref and "masks" in cand
    taken = np.zeros(m, bool)
    matched_ref = np.zeros(n, bool)
    worst_score, worst_iou = 0.0, 1.0
    for i in np.argsort(-ref["scores"], kind="stable"):
        ok = (~taken & (cand["labels"] == ref["labels"][i]) & (pair_iou[i] >= iou)
              & (np.abs(cand["scores"] - ref["scores"][i]) <= score_atol))
        for j in np.argsort(-np.where(ok, pair_iou[i], -1.0), kind="stable")[: int(ok.sum())]:
            mask_iou = _mask_iou(ref["masks"][i], cand["masks"][j]) if masks else 1.0
            if mask_iou >= iou:
                taken[j], matched_ref[i] = True, True
                worst_score = max(worst_score, float(abs(cand["scores"][j] - ref["scores"][i])))
                worst_iou = min(worst_iou, float(pair_iou[i, j]), mask_iou)
                break
    def cut(other: np.ndarray) -> float:
        """Scores up to this may be missing from ``other`` legitimately."""
        levels = [-np.inf if score_floor is None else score_floor]
        if max_detections is not None and other.size and other.size >= max_detections:
            levels.append(float(other.min()))
        return max(levels) + score_atol

    unmatched = int((ref["scores"][~matched_ref] > cut(cand["scores"])).sum()
                    + (cand["scores"][~taken] > cut(ref["scores"])).sum())
    return {"detections": float(n), "matched": float(matched_ref.sum()), "unmatched": float(unmatched),
            "score_max_diff": worst_score, "min_iou": worst_iou if matched_ref.any() else None}


def verify_inputs(ctx: DeployContext) -> tuple[np.ndarray, list[dict], list[dict[str, Any]]]:
    """The verify images as [N, 3, H, W], their metas, and records of ``verify/inputs/<stem>.bin`` files."""
    dataset, _ = build_deploy_dataset(ctx)
    indices = select_indices(len(dataset), int(ctx.deploy_cfg.verify.num_images))
    images, metas = collate_canvas([dataset[i] for i in indices], ctx.settings.input_shape, ctx.adapter.pad_position)
    images = images.numpy()
    folder = ctx.path("verify", "inputs")
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k, image in enumerate(images):
        stem = f"verify_{k:03d}"
        np.ascontiguousarray(image, dtype=np.float32).tofile(folder / f"{stem}.bin")
        records.append({"stem": stem, "bin": f"verify/inputs/{stem}.bin"})
    return images, metas, records


def _compare_backend(ctx: DeployContext, backend: Any, batch_size: int, records: Sequence[Mapping[str, Any]],
                     reference: Sequence[Mapping[str, np.ndarray]], metas: Sequence[dict],
                     reference_dets: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> dict[str, Any]:
    out_dir = ctx.path("verify", run_key(backend.name, batch_size))
    backend.run_records(records, batch_size, out_dir, manifest)
    tol = tolerances(ctx.deploy_cfg.verify, backend.precision)  # after the run: where it really ran decides
    names = ctx.adapter.output_names
    raw: dict[str, float] = {}
    dets: dict[str, float] = {"detections": 0.0, "matched": 0.0, "unmatched": 0.0, "score_max_diff": 0.0}
    min_iou = None
    floor, most = ctx.adapter.detection_cut
    for k, record in enumerate(records):
        out = om.read_output_files(out_dir, record["stem"], names, manifest["outputs"], batch_size=1)
        stats = ctx.adapter.compare(reference[k], out)
        raw = {key: max(v, raw.get(key, 0.0)) for key, v in stats.items()}
        candidate = ctx.adapter.postprocess({n: a[0] for n, a in out.items()}, metas[k])
        match = match_detections(reference_dets[k], candidate, tol["iou"], tol["score_atol"], floor, most)
        for key in ("detections", "matched", "unmatched"):
            dets[key] += match[key]
        dets["score_max_diff"] = max(dets["score_max_diff"], match["score_max_diff"])
        if match["min_iou"] is not None:
            min_iou = match["min_iou"] if min_iou is None else min(min_iou, match["min_iou"])
    status = "ok" if dets["unmatched"] == 0 else "FAIL"
    return {"backend": backend.name, "batch": batch_size, "precision": backend.precision, **raw,
            "raw_within_atol": _passes(raw, tol["atol"], tol["rtol"]), **dets, "min_iou": min_iou,
            "iou": tol["iou"], "score_atol": tol["score_atol"], "status": status}


def failed_row(backend: str, batch: int | str, precision: str | None, reason: str) -> dict[str, Any]:
    """The verify row of a backend that could not run: status ``failed: <reason>``."""
    return {"backend": backend, "batch": batch, "precision": precision, "status": f"failed: {reason}",
            "failed": reason}


def verify_backends(ctx: DeployContext, backends: Sequence[Any], filename: str = "verify.json",
                    eager_batches: bool = False,
                    known_failures: Mapping[tuple[str, int | str], str] | None = None) -> dict[str, Any]:
    """Compare each available backend x batch size with eager PyTorch at batch 1. A backend that fails to run is
    a ``failed: <reason>`` row and the others go on; after the table is written, :class:`BackendFailures` names
    the backends that failed or mismatched.

    ``eager_batches``: also run eager PyTorch at batch sizes above 1 (a batch must match image by image).
    ``known_failures``: ``(backend, batch) -> reason`` found before running (an ONNX file ``onnx.checker``
    refuses): recorded as that row instead of running it.
    """
    pending = dict(known_failures or {})
    manifest = load_manifest(ctx)
    images, metas, records = verify_inputs(ctx)
    eager = PyTorchRunner(ctx.adapter.export_module(ctx.model()), ctx.adapter.output_names, ctx.device)
    reference = [eager(images[i:i + 1]) for i in range(len(records))]
    reference_dets = [ctx.adapter.postprocess({n: a[0] for n, a in ref.items()}, metas[k])
                      for k, ref in enumerate(reference)]
    rows = []
    for bs in ctx.settings.export_batch_sizes:
        for backend in backends:
            # eager PyTorch at batch 1 is the reference; under torch.compile it is checked against it too
            if backend.name == "pytorch" and not (eager_batches and bs > 1) and not ctx.compile_pytorch:
                continue
            reason = pending.pop((backend.name, bs), None)
            if reason is None:
                why = backend.unavailable(bs)
                if why is not None:
                    logger.info("verify: %s batch %d skipped (%s)", backend.name, bs, why)
                    continue
                try:
                    rows.append(_compare_backend(ctx, backend, bs, records, reference, metas, reference_dets,
                                                 manifest))
                    continue
                except DeployError as exc:  # this backend's file or tool: the others are still verified
                    reason = str(exc)
            rows.append(failed_row(backend.name, bs, backend.precision, reason))
            logger.error("verify %s batch %s failed: %s; the other backends go on", backend.name, bs, reason)
    for (name, bs), reason in pending.items():  # ONNX files no verified backend runs (the dynamic-batch one, any
        # one when ONNX Runtime is not verified): onnx.checker refused a file this run exported
        rows.append(failed_row(name, bs, None, reason))
        logger.error("verify %s batch %s failed: %s; the other backends go on", name, bs, reason)
    tail = ["status", "detections", "matched", "unmatched", "score_max_diff", "min_iou", "precision"]
    raw_cols = [k for r in rows for k in r
                if k not in ("backend", "batch", *tail, "raw_within_atol", "iou", "score_atol", "failed")]
    columns = ["backend", "batch", *dict.fromkeys(raw_cols), *tail]
    table = format_table(rows, columns)
    fp32, fp16 = tolerances(ctx.deploy_cfg.verify, "fp32"), tolerances(ctx.deploy_cfg.verify, "fp16")
    print(f"\nverify on {len(records)} images (reference: eager PyTorch, batch 1; detections matched by label, "
          f"IoU >= {fp32['iou']:g} and score within {fp32['score_atol']:g}; fp16 backends: IoU >= {fp16['iou']:g}, "
          f"score within {fp16['score_atol']:g})\n{table}\n")
    if rows and all(r.get("detections", 0) == 0 for r in rows):
        print("note: the reference has no detections on these images (random weights?): only output shapes, "
              "dtypes and the raw differences were compared")
    result = {"atol": fp32["atol"], "rtol": fp32["rtol"], "tolerances": {"fp32": fp32, "fp16": fp16},
              "num_images": len(records), "rows": rows, "table": table}
    write_json(ctx.path("verify", filename), result)
    mismatched = [f"{r['backend']} b{r['batch']}" for r in rows if r["status"] == "FAIL"]
    broken = [f"{r['backend']} b{r['batch']}" for r in rows if r.get("failed")]
    problems = []
    if mismatched:
        problems.append(f"verify failed for {', '.join(mismatched)} (detections unmatched within the tolerances); "
                        f"see the table above and verify/{filename}, or raise deploy.verify tolerances")
    if broken:
        problems.append(f"verify could not run {', '.join(broken)} (the ERROR lines above and verify/{filename} "
                        "say why)")
    if problems:
        raise BackendFailures("; ".join(problems))
    return {"rows": len(rows), "passed": True}


def verified_backends(asked: Sequence[str]) -> list[str]:
    """The in-process backends the verify stage runs for ``deploy.backends``: those asked for, and for each compiled
    one asked for (om, torch_aie) the backend of the file it is compiled from (ONNX Runtime, TorchScript), in the
    registry's order."""
    from solo_npu.deploy.backends import BACKENDS

    sources = {BACKENDS[n].exported_format for n in asked if BACKENDS[n].compiled} - {None}
    return [name for name, cls in BACKENDS.items()
            if not cls.compiled and (name in asked or cls.exported_format in sources)]


def run_verify(ctx: DeployContext) -> dict[str, Any]:
    """``onnx.checker`` on every ONNX file, then the backends of :func:`verified_backends` that run the exported
    files as they are (no compile step)."""
    from solo_npu.deploy.backends import BACKENDS

    manifest = load_manifest(ctx)
    corrupt: dict[tuple[str, int | str], str] = {}
    for key, path in (manifest["files"].get("onnx") or {}).items():
        try:
            check_onnx(path)
        except DeployError as exc:  # onnxruntime's row at that batch size; the dynamic-batch file's own row
            corrupt[("onnxruntime", int(key)) if str(key).isdigit() else ("onnx", str(key))] = str(exc)
    names = verified_backends(ctx.settings.backends)
    left = [n for n, cls in BACKENDS.items() if not cls.compiled and n not in names]
    if left:
        logger.info("verify: %s not in deploy.backends=%s: not verified", ", ".join(left), list(ctx.settings.backends))
    backends = [BACKENDS[name](ctx) for name in names]
    return verify_backends(ctx, backends, "verify.json", eager_batches=True, known_failures=corrupt)
