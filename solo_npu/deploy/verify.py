"""Verify stage: onnx.checker, then ONNX Runtime and TorchScript against eager PyTorch on real images.

The reference is eager export mode at batch 1, image by image, so a batch-B export is checked for
both backend parity and correct per-image results. Numbers come from the adapter's ``compare``
(SOLOv2: max abs difference of scores and masks over the valid top-k slots, label mismatches); the
stage fails when a ``*_max_abs`` exceeds ``deploy.verify.atol`` or a ``*_mismatch`` is non-zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from solo_npu.deploy.context import DeployContext, DeployError, write_json
from solo_npu.deploy.export import exported_file, load_manifest
from solo_npu.deploy.infer import padded
from solo_npu.deploy.preprocess import build_deploy_dataset, collate_canvas, select_indices
from solo_npu.deploy.runners import OnnxRuntimeRunner, PyTorchRunner, TorchScriptRunner

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


def run_verify(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    vcfg = ctx.deploy_cfg.get("verify") or {}
    atol = float(vcfg.get("atol", 1e-4))
    rtol = float(vcfg.get("rtol", 0.0))
    names = ctx.adapter.output_names
    for path in (manifest["files"].get("onnx") or {}).values():
        check_onnx(path)
    dataset, _ = build_deploy_dataset(ctx)
    indices = select_indices(len(dataset), int(vcfg.get("num_images", 2)))
    images, _ = collate_canvas([dataset[i] for i in indices], ctx.settings.input_shape,
                               ctx.adapter.pad_position)
    images = images.numpy()
    eager = PyTorchRunner(ctx.adapter.export_module(ctx.model()), names, ctx.device)
    reference = [eager(images[i:i + 1]) for i in range(len(indices))]
    rows = []
    for bs in ctx.settings.export_batch_sizes:
        candidates = {}
        if exported_file(manifest, "onnx", bs):
            candidates["onnxruntime"] = OnnxRuntimeRunner(exported_file(manifest, "onnx", bs), names, ctx.device,
                                                          ctx.deploy_cfg.get("onnxruntime"))
        if exported_file(manifest, "torchscript", bs):
            candidates["torchscript"] = TorchScriptRunner(exported_file(manifest, "torchscript", bs), names,
                                                          ctx.device)
        if bs > 1:
            candidates["pytorch"] = eager  # the eager batch must match eager image by image too
        for backend, runner in candidates.items():
            worst: dict[str, float] = {}
            for start in range(0, len(indices), bs):
                members = list(range(start, min(start + bs, len(indices))))
                out = runner(images[padded(members, bs)])
                for j, i in enumerate(members):
                    stats = ctx.adapter.compare(reference[i], {n: a[j:j + 1] for n, a in out.items()})
                    worst = {k: max(v, worst.get(k, 0.0)) for k, v in stats.items()}
            status = "ok" if _passes(worst, atol, rtol) else "FAIL"
            rows.append({"backend": backend, "batch": bs, **worst, "status": status})
    columns = ["backend", "batch", *[k for k in rows[0] if k not in ("backend", "batch", "status")], "status"] \
        if rows else ["backend", "batch", "status"]
    table = format_table(rows, columns)
    print(f"\nverify on {len(indices)} images (reference: eager PyTorch, batch 1; atol {atol:g}, rtol {rtol:g})"
          f"\n{table}\n")
    if rows and all(r.get("valid", 1) == 0 for r in rows):
        print("note: the reference has no valid detections on these images (random weights?): only output "
              "shapes, dtypes and empty slots were compared")
    result = {"atol": atol, "rtol": rtol, "num_images": len(indices), "rows": rows, "table": table}
    write_json(ctx.path("verify", "verify.json"), result)
    failed = [f"{r['backend']} b{r['batch']}" for r in rows if r["status"] != "ok"]
    if failed:
        raise DeployError(f"verify failed for {', '.join(failed)} (tolerance {atol:g}); see the table above "
                          "and verify/verify.json, or raise deploy.verify.atol")
    return {"rows": len(rows), "passed": True}

