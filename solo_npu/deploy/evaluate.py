"""Evaluate stage: raw outputs of every backend -> adapter postprocess -> COCO json -> AP.

Reads ``infer/<backend>_b<B>/`` (any backend, ais_bench's om outputs included), writes
``evaluate/<backend>_b<B>.json`` (COCO results) and ``evaluate/metrics.json``. With
``deploy.evaluate.eager=true`` the eager ``model.predict`` on the same preprocessed inputs is scored
too (key ``eager``), the reference every backend is compared with.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from solo_npu.deploy.context import DeployContext, DeployError, read_json, write_json
from solo_npu.deploy.infer import batches, read_image_outputs
from solo_npu.deploy.preprocess import load_index, load_inputs, metas_of

logger = logging.getLogger(__name__)


def _evaluator(ctx: DeployContext, index: dict[str, Any]):
    from solo_npu.evaluation import CocoEvaluator

    try:
        return CocoEvaluator(index["ann_file"], index["label_to_cat"], iou_types=ctx.adapter.iou_types)
    except FileNotFoundError as exc:
        raise DeployError(f"{exc} (the annotation file used by preprocess has moved; re-run preprocess)") from exc


def evaluate_outputs(ctx: DeployContext, key: str, index: dict[str, Any]) -> dict[str, Any]:
    """Score one ``infer/<key>`` folder; returns the metrics and the postprocess time per image."""
    out_dir = ctx.path("infer", key)
    info = read_json(out_dir / "outputs.json", f"outputs of {key}", stage="infer")
    records = {r["stem"]: r for r in index["images"]}
    evaluator = _evaluator(ctx, index)
    post_seconds = 0.0
    for stem in info["stems"]:
        if stem not in records:
            raise DeployError(f"infer/{key} holds outputs for {stem!r}, which preprocess did not write; re-run infer")
        outputs = read_image_outputs(out_dir, stem, info["output_names"], info["outputs"])
        meta = metas_of([records[stem]])[0]
        start = time.perf_counter()
        result = ctx.adapter.postprocess(outputs, meta)
        post_seconds += time.perf_counter() - start
        evaluator.process([meta], [result])
    metrics = evaluator.evaluate()
    evaluator.dump(ctx.path("evaluate", f"{key}.json"))
    return {"metrics": metrics, "postprocess_ms": 1000 * post_seconds / max(1, len(info["stems"]))}


def evaluate_eager(ctx: DeployContext, index: dict[str, Any], batch_size: int = 1) -> dict[str, Any]:
    """``model.predict`` on the preprocessed inputs: the eager reference for every backend."""
    records = index["images"]
    evaluator = _evaluator(ctx, index)
    model = ctx.model()
    for members in batches(len(records), batch_size):
        recs = [records[i] for i in members]
        images = torch.from_numpy(load_inputs(ctx, recs)).to(ctx.device.device)
        metas = metas_of(recs)
        with torch.no_grad():
            results = model.predict(images, metas)
        evaluator.process(metas, [{k: v.cpu() for k, v in r.items()} for r in results])
    metrics = evaluator.evaluate()
    evaluator.dump(ctx.path("evaluate", "eager.json"))
    return {"metrics": metrics}


def run_evaluate(ctx: DeployContext) -> dict[str, Any]:
    index = load_index(ctx)
    infer_root = ctx.path("infer")
    keys = sorted(p.parent.name for p in infer_root.glob("*/outputs.json")) if infer_root.is_dir() else []
    if not keys:
        raise DeployError(f"no inference outputs under {infer_root}: run stages=[infer] first")
    summary = {key: evaluate_outputs(ctx, key, index) for key in keys}
    if (ctx.deploy_cfg.get("evaluate") or {}).get("eager"):
        summary["eager"] = evaluate_eager(ctx, index)
    write_json(ctx.path("evaluate", "metrics.json"), summary)
    for key, entry in summary.items():
        ap = {t: round(m["AP"], 4) for t, m in entry["metrics"].items()}
        logger.info("evaluate %s: AP %s", key, ap)
    return summary
