"""Report stage: one markdown table (and json) from what the other stages wrote, printed at the end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from solo_npu.deploy.benchmark import ap_by_type
from solo_npu.deploy.context import DeployContext, read_json, write_json
from solo_npu.deploy.evaluate import score_types
from solo_npu.deploy.infer import failed_runs
from solo_npu.deploy.verify import format_table
from solo_npu.runtime import describe_machine
from solo_npu.utils.files import write_text_atomic

# One meaning per column: the timing scope and the memory source vary by backend, so each row states them.
BENCH_COLUMNS = {
    "backend": "backend", "batch_size": "batch", "mean_ms": "latency mean (ms)", "p50_ms": "p50 (ms)",
    "p99_ms": "p99 (ms)", "throughput": "model img/s", "timing": "timing scope", "e2e_throughput": "e2e img/s",
    "peak_mb": "peak MB", "memory": "memory source", "device": "device", "threads": "threads",
}


def threads_text(threads: dict[str, Any] | None) -> str | None:
    """A row's thread settings in a few words: ``torch 8`` (torch's intra-op threads, eager and TorchScript) or
    ``intra 8, inter default, sequential, opt all`` (onnxruntime's session: 0 threads is onnxruntime's default)."""
    if not threads:
        return None
    if "torch_num_threads" in threads:
        return f"torch {threads['torch_num_threads']}"

    def count(key: str) -> str:
        return str(threads.get(key) or "default")

    spin = threads.get("allow_spinning")
    return (f"intra {count('intra_op_num_threads')}, inter {count('inter_op_num_threads')}, "
            f"{threads.get('execution_mode')}, opt {threads.get('graph_optimization_level')}, "
            f"spin {'default' if spin is None else 'on' if spin else 'off'}")


def _spinning_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line for onnxruntime rows on the CPU whose e2e rate was timed with its threads spinning (its default)."""
    spun = [f"b{r['batch_size']}" for r in rows
            if r.get("backend") == "onnxruntime" and r.get("device") == "cpu" and r.get("e2e_throughput")
            and (r.get("threads") or {}).get("allow_spinning", True) is not False]
    if not spun:
        return []
    return [f"- onnxruntime on the CPU ({', '.join(spun)}): its threads busy-wait after each run (onnxruntime's "
            "default), which takes the cores from the host work of the e2e column (reading, resizing, "
            "post-processing); deploy.onnxruntime.allow_spinning=false stops them (docs/benchmarks.md: the demo "
            "model's e2e rate 1.8x, its model rate 0.82x, on a 2-core Xeon)"]


def _runs(count: Any, noun: str) -> str:
    """``1 warm-up run``, ``3 timed runs``; ``-`` where the record has no count."""
    if count is None:
        return f"- {noun}s"
    return f"{count} {noun}{'' if int(count) == 1 else 's'}"


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


def _fmt_row(row: dict[str, Any], ap_types: list[str]) -> dict[str, Any]:
    out = {}
    for key, title in BENCH_COLUMNS.items():
        value = threads_text(row.get(key)) if key == "threads" else row.get(key)
        if isinstance(value, float):
            value = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        out[title] = value
    by_type = row.get("AP_by_type") or ({ap_types[0]: row["AP"]} if row.get("AP") is not None and ap_types else {})
    for t in ap_types:
        out[f"{t} AP"] = None if by_type.get(t) is None else f"{by_type[t]:.3f}"
    return out


def _pytorch_lines(ctx: DeployContext) -> list[str]:
    """What the pytorch backend ran when ``deploy.pytorch.compile`` asked for torch.compile."""
    if not ctx.deploy_cfg.pytorch.compile:
        return []
    if not ctx.compile_pytorch:
        return [f"- pytorch: eager; deploy.pytorch.compile=true, but {ctx.compile_refusal}"]
    how = "inductor with freezing: weights as constants" if ctx.device.type == "cpu" else "inductor"
    return [f"- pytorch: under torch.compile ({how}), compiled in its first warm-up run at each batch size; the "
            "verify stage checks it against eager PyTorch at every batch size"]


def _more_warmup(bench: dict[str, Any]) -> str:
    """The rows that ran more warm-up runs than asked, and why (TorchScript's executor profiles and optimises
    first, torch.compile compiles), one entry per reason."""
    by_reason: dict[str, list[str]] = {}
    for r in bench.get("rows", []):
        if r.get("warmup") is not None and r["warmup"] != bench.get("warmup"):
            by_reason.setdefault(r.get("warmup_reason") or "", []).append(f"{r['backend']} b{r['batch_size']}: "
                                                                          f"{r['warmup']}")
    if not by_reason:
        return ""
    return " (" + "; ".join(f"{', '.join(rows)}{': ' + why if why else ''}" for why, rows in by_reason.items()) + ")"


def _classes_line(manifest: dict[str, Any], ctx: DeployContext) -> str:
    """How many classes the deployed model predicts, which, and who decided (the export manifest)."""
    if manifest.get("num_classes") is None:
        return "- classes: unknown (re-run stages=[export] to record them)"
    names = manifest.get("class_names")
    shown = "" if not names else ": " + ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)"
                                                                   if len(names) > 10 else "")
    return f"- classes: {manifest['num_classes']} from the {manifest.get('classes_from') or 'config'}{shown}"


def _scored_line(ctx: DeployContext, num_images: int) -> str:
    """The images AP was scored on: all of them, or (``deploy.evaluate.images=annotated``) those with an
    annotation, counted by the evaluate stage."""
    if ctx.settings.scored_images != "annotated":
        return f"{num_images} images"
    metrics = _optional(ctx, "evaluate", "metrics.json") or {}
    counts = {e.get("images") for e in metrics.values() if isinstance(e, dict) and e.get("images") is not None}
    scored = str(counts.pop()) if len(counts) == 1 else "the"
    return (f"{scored} of the {num_images} images, those with an annotation (deploy.evaluate.images=annotated, as "
            "the model's guide scores)")


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
    ap_types = list(bench.get("ap_types") or score_types(ctx.adapter.iou_types))
    ap_batches = list(bench.get("ap_batch_sizes") or [])
    plan = _optional(ctx, "plan.json")
    lines = [
        f"# Deploy report: {ctx.model_name}",
        "",
        f"- date: {date}",
        f"- machine: {machine_description()} (device {ctx.device.type})",
        f"- input: Bx3x{h}x{w}, {num_images} images, {weights}",
        _classes_line(manifest, ctx),
        f"- timing: {_runs(bench.get('warmup'), 'warm-up run')} excluded{_more_warmup(bench)}, "
        f"{_runs(bench.get('iters'), 'timed run')}; latency is per batch; e2e = image file to "
        f"{'pasted masks' if 'segm' in ctx.adapter.iou_types else 'boxes'} in full batches of the row's size "
        "(in-process runners only)",
        "- timing scope: `model only` = the model call, inputs and outputs already where it runs; "
        "`with host-device copies` = numpy in, numpy out; `device compute from ais_bench` = ais_bench's "
        "NPU_compute_time (no host-device copies)",
        "- threads: `torch N` = torch's intra-op threads (eager, TorchScript); onnxruntime: its session's "
        "intra-op and inter-op threads (default: onnxruntime's own count), execution mode and graph optimization "
        "level, and whether its threads spin; none for om and torch_aie, which run on the chip",
        *_spinning_lines(bench["rows"]),
        *_pytorch_lines(ctx),
        f"- AP: COCO {', '.join(ap_types) or '-'} over {_scored_line(ctx, num_images)}, scored at batch "
        f"{', '.join(str(b) for b in ap_batches) or '-'}; other batch sizes are timed only",
        "",
        format_table([_fmt_row(r, ap_types) for r in bench["rows"] if not r.get("failed")],
                     [*BENCH_COLUMNS.values(), *(f"{t} AP" for t in ap_types)]),
    ]
    failed = failed_runs(ctx)
    if failed:
        lines += ["", "Failed (not in the table):", *[f"- {f}" for f in failed]]
    checks = failed_runs(ctx, ("verify", "compile", "evaluate"))
    if checks:  # a verify row that failed or mismatched, a backend evaluate could not score (its AP is '-')
        lines += ["", "Failed in verify, compile or evaluate:", *[f"- {f}" for f in checks]]
    metrics = _optional(ctx, "evaluate", "metrics.json") or {}
    evaluated = _evaluated_rows(metrics, ap_types) if not bench["rows"] else []
    if evaluated:  # evaluate ran, benchmark did not: the table above is empty, the APs are here
        lines += ["", "AP of the evaluate stage (no benchmark stage ran: nothing was timed):", "",
                  format_table(evaluated, ["run", "images", *(f"{t} AP" for t in ap_types)])]
    eager = bench.get("eager_AP_by_type") or ({ap_types[0]: bench["eager_AP"]}
                                              if bench.get("eager_AP") is not None and ap_types else {})
    if eager:
        lines += ["", "Eager PyTorch `model.predict` on the same inputs: "
                  + ", ".join(f"{t} AP {'undefined' if v is None else f'{v:.3f}'}" for t, v in eager.items())]
    if ctx.adapter.anchors:
        lines += ["", "Published anchors:", "", format_table(ctx.adapter.anchors, list(ctx.adapter.anchors[0]))]
    if verify:
        lines += ["", f"Verify ({verify['num_images']} images, atol {verify['atol']:g}):", "", verify["table"]]
    if compiled and compiled.get("messages"):
        lines += ["", "Compile:", *[f"- {m}" for m in compiled["messages"]]]
    if plan:
        lines += ["", f"Disk estimate ({plan['num_images']} images, peak {plan['peak'] / 1e9:.2f} GB; "
                  f"stages=[plan]): inputs {plan['parts']['inputs'] / 1e9:.2f} GB, raw outputs at peak "
                  f"{plan['raw_peak'] / 1e9:.2f} GB"]
    text = "\n".join(lines) + "\n"
    data = {"model": ctx.model_name, "date": date, "machine": machine_description(), "input_shape": [3, h, w],
            "num_images": num_images, "random_weights": random_weights, "benchmark": bench,
            "num_classes": manifest.get("num_classes"), "class_names": manifest.get("class_names"),
            "classes_from": manifest.get("classes_from"), "ap_types": ap_types, "plan": plan,
            "anchors": ctx.adapter.anchors, "verify": verify, "compile": compiled, "evaluated": evaluated}
    return text, data


def _evaluated_rows(metrics: dict[str, Any], ap_types: list[str]) -> list[dict[str, Any]]:
    """One row per scored run of ``evaluate/metrics.json`` (``onnxruntime_b1``, ``eager``; a run evaluate could
    not score is in the failure list): its images and AP per iou type."""
    rows = []
    for key, entry in metrics.items():
        if not isinstance(entry, dict) or "metrics" not in entry:
            continue
        aps = ap_by_type(metrics, key)
        rows.append({"run": key, "images": entry.get("images"),
                     **{f"{t} AP": None if aps.get(t) is None else round(aps[t], 4) for t in ap_types}})
    return rows


def run_report(ctx: DeployContext) -> dict[str, Any]:
    text, data = build_report(ctx)
    write_text_atomic(ctx.run_dir / "report.md", text)
    write_json(ctx.run_dir / "report.json", data)
    print("\n" + text)
    return {"report": str(ctx.run_dir / "report.md")}
