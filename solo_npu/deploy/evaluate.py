"""Evaluate stage: every backend's COCO results -> AP for every iou type the model's results carry.

Reads ``infer/<backend>_b<B>/``. Where the raw outputs are still there (``deploy.infer.keep_raw``, or
ais_bench outputs put there by hand) they go through the adapter's postprocess into
``evaluate/<backend>_b<B>.json`` first; otherwise the infer stage has already written that file and deleted
the raw outputs. Writes ``evaluate/metrics.json``. With ``deploy.evaluate.eager=true`` the eager
``model.predict`` on the same preprocessed inputs is scored too (key ``eager``), the reference every
backend is compared with.

A backend whose outputs cannot be scored (its raw outputs and results gone, outputs of images preprocess did not
write) is one ERROR line and ``{"failed": reason}`` in ``metrics.json``; the others are scored, and the pipeline
ends with an error naming it (:func:`solo_npu.deploy.infer.failed_runs`).

Every result carries a box (taken from its mask when the model gives none), so mask models are scored on
``segm`` and ``bbox`` and box models on ``bbox``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import torch

from solo_npu.deploy.context import DeployContext, DeployError, read_json, run_key, write_json
from solo_npu.deploy.infer import batches, collect_results, infer_batch_sizes, raw_files, results_path
from solo_npu.deploy.preprocess import load_index, load_inputs, metas_of
from solo_npu.evaluation.coco_eval import score_types  # train.py's rule; benchmark.py and report.py read it here

logger = logging.getLogger(__name__)


def _ground_truth(index: dict[str, Any]) -> Any:
    from solo_npu.evaluation.coco_eval import load_coco

    try:
        return load_coco(index["ann_file"])
    except FileNotFoundError as exc:
        raise DeployError(f"{exc} (the annotation file used by preprocess has moved; re-run preprocess)") from exc


def _score(ctx: DeployContext, gt: Any, results: list[dict[str, Any]], image_ids: Sequence[Any],
           label_to_cat: Sequence[Any]) -> dict[str, Any]:
    """COCO metrics of ``results`` on ``image_ids`` (those :func:`scored_image_ids` keeps)."""
    from solo_npu.evaluation.coco_eval import evaluate_coco, scored_categories

    types = score_types(ctx.adapter.iou_types)
    if not image_ids:  # nothing scored: undefined, not the whole file's objects missed
        return evaluate_coco(gt, [], types, img_ids=[], cat_ids=scored_categories(gt, label_to_cat))
    return evaluate_coco(gt, results, types, img_ids=image_ids, cat_ids=scored_categories(gt, label_to_cat))


def scored_image_ids(ctx: DeployContext, gt: Any, image_ids: Sequence[Any]) -> list[Any]:
    """``image_ids`` that ``deploy.evaluate.images`` scores: all, or those with an annotation (``annotated``:
    the MLPerf SSD reference and its Ascend guide drop the others, ssd_preprocess.py ``if len(v[2]) == 0``)."""
    if ctx.settings.scored_images != "annotated":
        return list(image_ids)
    from solo_npu.evaluation.coco_eval import image_id_of

    return [i for i in image_ids if gt.imgToAnns.get(image_id_of(i))]


def evaluate_outputs(ctx: DeployContext, key: str, index: dict[str, Any], gt: Any = None) -> dict[str, Any]:
    """Score one ``infer/<key>`` folder; returns the metrics and the postprocess time per image."""
    gt = gt if gt is not None else _ground_truth(index)
    out_dir = ctx.path("infer", key)
    info = read_json(out_dir / "outputs.json", f"outputs of {key}", stage="infer")
    names = info["output_names"]
    if all(f.is_file() for f in raw_files(out_dir, info["stems"], len(names))):
        collected = collect_results(ctx, key, index["images"], index["label_to_cat"])
    elif info.get("raw_kept") is False and results_path(ctx, key).is_file():
        collected = info
    else:
        raise DeployError(f"infer/{key} has neither all raw outputs nor {results_path(ctx, key)}: re-run infer")
    results = json.loads(results_path(ctx, key).read_text())
    scored = scored_image_ids(ctx, gt, collected["image_ids"])
    from solo_npu.evaluation.coco_eval import image_id_of

    on_scored = {image_id_of(i) for i in scored}
    return {"metrics": _score(ctx, gt, results, scored, index["label_to_cat"]),
            "postprocess_ms": collected["postprocess_ms"], "images": len(scored),
            "detections": sum(r["image_id"] in on_scored for r in results)}  # on the images scored


def evaluate_eager(ctx: DeployContext, index: dict[str, Any], batch_size: int = 1) -> dict[str, Any]:
    """``model.predict`` on the preprocessed inputs: the eager reference for every backend."""
    from solo_npu.evaluation import CocoEvaluator

    records = index["images"]
    try:
        evaluator = CocoEvaluator(index["ann_file"], index["label_to_cat"],
                                  iou_types=score_types(ctx.adapter.iou_types))
    except FileNotFoundError as exc:
        raise DeployError(f"{exc} (the annotation file used by preprocess has moved; re-run preprocess)") from exc
    model = ctx.model()
    scored = set(scored_image_ids(ctx, evaluator.coco_gt, [r["image_id"] for r in records]))
    records = [r for r in records if r["image_id"] in scored]  # the evaluator scores the images it processed
    for members in batches(len(records), batch_size):
        recs = [records[i] for i in members]
        images = torch.from_numpy(load_inputs(ctx, recs)).to(ctx.device.device)
        metas = metas_of(recs)
        with torch.no_grad():
            results = model.predict(images, metas)
        evaluator.process(metas, [{k: v.cpu() for k, v in r.items()} for r in results])
    metrics = evaluator.evaluate()
    evaluator.dump(ctx.path("evaluate", "eager.json"))
    return {"metrics": metrics, "images": len(records)}


def run_evaluate(ctx: DeployContext) -> dict[str, Any]:
    index = load_index(ctx)
    infer_root = ctx.path("infer")
    found = sorted(p.parent.name for p in infer_root.glob("*/outputs.json")) if infer_root.is_dir() else []
    # only what this run asks for: outputs an earlier run of other backends or batch sizes left in the run directory
    # would otherwise be scored and reported beside this run's as if they were its own
    names, sizes = list(ctx.settings.backends), infer_batch_sizes(ctx)
    asked = {run_key(name, bs) for name in names for bs in sizes}
    keys = [key for key in found if key in asked]
    left = [key for key in found if key not in asked]
    if left:
        logger.warning("evaluate: not scoring %s: earlier outputs under %s of backends or batch sizes this run does "
                       "not ask for (deploy.backends=%s, infer batch sizes %s)", ", ".join(left), infer_root, names,
                       sizes)
    if not keys:
        raise DeployError(f"no inference outputs under {infer_root} for deploy.backends={names} at batch sizes "
                          f"{sizes}: run stages=[infer] first")
    gt = _ground_truth(index)
    summary: dict[str, Any] = {}
    for key in keys:
        try:
            summary[key] = evaluate_outputs(ctx, key, index, gt)
        except (DeployError, json.JSONDecodeError) as exc:  # this backend's outputs: the others are still scored
            reason = str(exc)
            if not isinstance(exc, DeployError):
                reason = f"infer/{key}/outputs.json or {results_path(ctx, key)} is not JSON ({exc}): re-run infer"
            summary[key] = {"failed": reason}
            logger.error("evaluate %s failed: %s; the other backends go on", key, reason)
    if ctx.deploy_cfg.evaluate.eager:
        summary["eager"] = evaluate_eager(ctx, index)
    write_json(ctx.path("evaluate", "metrics.json"), summary)
    for key, entry in summary.items():
        if "metrics" not in entry:
            continue
        ap = {t: None if m["AP"] is None else round(m["AP"], 4) for t, m in entry["metrics"].items()}
        logger.info("evaluate %s: AP %s", key, ap)
    return summary
