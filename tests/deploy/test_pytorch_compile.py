"""deploy.pytorch.compile=true: the pytorch backend runs its export module under torch.compile (inductor; on the
CPU with freezing), compiled once per process and batch size in a warm-up run that is not timed, verified against
eager PyTorch at batch 1 too, and scored; where the device cannot compile, one WARNING and eager PyTorch."""

from __future__ import annotations

import json
import logging

import torch

from solo_npu.deploy.pipeline import run_pipeline

STAGES = "stages=[export,verify,preprocess,infer,evaluate,benchmark,report]"
ASK = ("deploy.backends=[pytorch]", "deploy.export_formats=[torchscript]", "deploy.batch_sizes=[1]",
       "deploy.pytorch.compile=true", "deploy.evaluate.eager=true", "deploy.benchmark.warmup=0",
       "deploy.benchmark.iters=2", "deploy.benchmark.e2e_images=2", STAGES)


def _report_line(ctx) -> str:
    return next(line for line in (ctx.run_dir / "report.md").read_text().splitlines()
                if line.startswith("- pytorch: "))


def test_compiled_pytorch_is_verified_scored_and_timed_after_compiling(make_ctx):
    ctx = make_ctx(*ASK)
    run_pipeline(ctx.cfg, ctx=ctx)
    assert "RANDOM" not in (ctx.run_dir / "report.md").read_text()  # the fitted model given with set_model
    module = ctx.pytorch_module()
    assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
    assert ctx.pytorch_module() is module  # one compiled module for every stage and batch size

    verify = json.loads(ctx.path("verify", "verify.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in verify["rows"]}
    row = rows[("pytorch", 1)]  # the compiled module against eager PyTorch, which is not compared with itself
    assert row["status"] == "ok" and row["valid"] > 0, row
    assert row["scores_max_abs"] <= 1e-4 and row["labels_mismatch"] == 0, row

    metrics = json.loads(ctx.path("evaluate", "metrics.json").read_text())
    eager = metrics["eager"]["metrics"]["segm"]["AP"]
    assert eager > 0.3 and abs(metrics["pytorch_b1"]["metrics"]["segm"]["AP"] - eager) <= 0.005

    bench = json.loads(ctx.path("benchmark", "benchmark.json").read_text())
    (bench_row,) = bench["rows"]
    assert bench_row["warmup"] == 1  # 0 asked: the compiling run is not timed
    assert "- timing: 0 warm-up runs excluded (pytorch b1: 1: torch.compile compiles at the first run), " in (
        ctx.run_dir / "report.md").read_text()
    assert _report_line(ctx).startswith("- pytorch: under torch.compile (inductor with freezing: weights as "
                                        "constants), compiled in its first warm-up run")


def test_a_device_that_cannot_compile_runs_eager_with_one_warning(make_ctx, monkeypatch, caplog):
    reason = "torch.compile's inductor backend does not generate code for npu devices"
    monkeypatch.setattr("solo_npu.deploy.context.compile_unsupported", lambda device_type: reason)
    monkeypatch.setattr("solo_npu.models.inference.compile_unsupported", lambda device_type: reason)
    ctx = make_ctx(*ASK)
    with caplog.at_level(logging.WARNING):
        run_pipeline(ctx.cfg, ctx=ctx)
    assert not isinstance(ctx.pytorch_module(), torch._dynamo.eval_frame.OptimizedModule)
    warnings = [r.getMessage() for r in caplog.records if "deploy.pytorch.compile" in r.getMessage()]
    assert warnings == [f"deploy.pytorch.compile=true: the pytorch backend runs eager: {reason}"]
    assert _report_line(ctx) == f"- pytorch: eager; deploy.pytorch.compile=true, but {reason}"
