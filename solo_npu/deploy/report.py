"""Report stage: one markdown table (and json) from what the other stages wrote, printed at the end."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from solo_npu.deploy.context import DeployContext, read_json, write_json
from solo_npu.deploy.verify import format_table
from solo_npu.runtime import describe_machine

BENCH_COLUMNS = {
    "backend": "backend", "batch_size": "batch", "mean_ms": "latency mean (ms)", "p50_ms": "p50 (ms)",
    "p99_ms": "p99 (ms)", "throughput": "model img/s", "e2e_throughput": "e2e img/s", "peak_mb": "peak MB",
    "AP": "AP", "timing": "timing", "device": "device",
}


def machine_description() -> str:
    """CPU model, core count, accelerators and library versions, for the record."""
    parts = [describe_machine()]
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def _optional(ctx: DeployContext, *parts: str) -> Any:
    path = ctx.path(*parts)
    return read_json(path) if path.is_file() else None


def _fmt_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, title in BENCH_COLUMNS.items():
        value = row.get(key)
        if isinstance(value, float):
            value = f"{value:.3f}" if key == "AP" else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        out[title] = value
    return out


def build_report(ctx: DeployContext) -> tuple[str, dict[str, Any]]:
    bench = _optional(ctx, "benchmark", "benchmark.json") or {"rows": []}
    manifest = _optional(ctx, "export", "manifest.json") or {}
    verify = _optional(ctx, "verify", "verify.json")
    compiled = _optional(ctx, "compile", "compile.json")
    index = _optional(ctx, "preprocess", "index.json")
    h, w = ctx.settings.input_shape
    random_weights = manifest.get("random_weights", ctx.random_weights)
    weights = "RANDOM weights (no checkpoint): AP is meaningless" if random_weights else \
        f"checkpoint {manifest.get('checkpoint') or ctx.cfg.get('checkpoint')}"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    num_images = len(index["images"]) if index else 0
    lines = [
        f"# Deploy report: {ctx.model_name}",
        "",
        f"- date: {date}",
        f"- machine: {machine_description()} (device {ctx.device.type})",
        f"- input: Bx3x{h}x{w}, {num_images} images, {weights}",
        f"- timing: {bench.get('warmup', '-')} warm-up runs excluded, {bench.get('iters', '-')} timed runs; "
        "latency is per batch; e2e = image file to pasted masks",
        "",
        format_table([_fmt_row(r) for r in bench["rows"]], list(BENCH_COLUMNS.values())),
    ]
    if bench.get("eager_AP") is not None:
        lines += ["", f"Eager PyTorch `model.predict` on the same inputs: AP {bench['eager_AP']:.3f}"]
    if ctx.adapter.anchors:
        lines += ["", "Published anchors:", "", format_table(ctx.adapter.anchors, list(ctx.adapter.anchors[0]))]
    if verify:
        lines += ["", f"Verify ({verify['num_images']} images, atol {verify['atol']:g}):", "", verify["table"]]
    if compiled and compiled.get("messages"):
        lines += ["", "Compile:", *[f"- {m}" for m in compiled["messages"]]]
    text = "\n".join(lines) + "\n"
    data = {"model": ctx.model_name, "date": date, "machine": machine_description(), "input_shape": [3, h, w],
            "num_images": num_images, "random_weights": random_weights, "benchmark": bench,
            "anchors": ctx.adapter.anchors, "verify": verify, "compile": compiled}
    return text, data


def run_report(ctx: DeployContext) -> dict[str, Any]:
    text, data = build_report(ctx)
    (ctx.run_dir / "report.md").write_text(text)
    write_json(ctx.run_dir / "report.json", data)
    print("\n" + text)
    return {"report": str(ctx.run_dir / "report.md")}
