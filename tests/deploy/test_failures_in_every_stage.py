"""A backend that fails in verify or evaluate (a TorchScript file this torch cannot load, a corrupt ONNX file, outputs
that do not match eager PyTorch, infer outputs that cannot be scored) is one ERROR line and a row saying so; the
other backends are still verified, inferred, scored and timed, the report is written, and the run ends with one
error naming every failure. Before, the first such failure ended the run: no later stage ran and no report."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from solo_npu.deploy.context import DeployError
from solo_npu.deploy.export import run_export
from solo_npu.deploy.pipeline import run_pipeline
from solo_npu.deploy.preprocess import run_preprocess

SETTINGS = ("deploy.backends=[pytorch,torchscript,onnxruntime]", "deploy.benchmark.iters=1",
            "deploy.benchmark.warmup=0", "deploy.benchmark.e2e_images=1", "deploy.infer.batch_sizes=[1]",
            "deploy.infer.keep_raw=false", "deploy.verify.num_images=1")
LATER = "stages=[verify,infer,evaluate,benchmark,report]"


@pytest.fixture(scope="module")
def exported(make_ctx):
    """export (TorchScript and ONNX, batch 1 and 2) and preprocess of the fitted tiny model."""
    ctx = make_ctx(*SETTINGS)
    run_export(ctx)
    run_preprocess(ctx)
    return ctx


def copied(exported, make_ctx, tmp_path, *overrides):
    """A context on a copy of the exported run (its manifest names its files relative to it)."""
    run_dir = tmp_path / "run"
    shutil.copytree(exported.run_dir, run_dir)
    return make_ctx(*SETTINGS, *overrides, run_dir=run_dir)


def read(ctx, *parts):
    return json.loads(ctx.path(*parts).read_text())


def test_backends_failing_in_verify_leave_the_others_verified_scored_and_reported(exported, make_ctx, tmp_path,
                                                                                  caplog):
    ctx = copied(exported, make_ctx, tmp_path, LATER)
    for bs in (1, 2):  # cut short, as an interrupted copy leaves them
        ts = ctx.path("export", f"model_b{bs}.ts")
        ts.write_bytes(ts.read_bytes()[:300])
    ctx.path("export", "model_b2.onnx").write_bytes(b"\x08\x07garbage")
    with caplog.at_level(logging.ERROR), pytest.raises(DeployError) as err:
        run_pipeline(ctx.cfg, ctx=ctx)
    message = str(err.value)
    assert message.startswith("7 backend run(s) failed (") and "\n" not in message
    for part in ("torchscript_b1 verify: this torch cannot load", "torchscript_b2 verify: this torch cannot load",
                 "onnxruntime_b2 verify: corrupt ONNX file", "torchscript_b1 infer: this torch cannot load",
                 "torchscript_b2 benchmark: ", "onnxruntime_b2 benchmark: "):
        assert part in message, part

    rows = {(r["backend"], r["batch"]): r for r in read(ctx, "verify", "verify.json")["rows"]}
    assert set(rows) == {("onnxruntime", 1), ("torchscript", 1), ("pytorch", 2), ("onnxruntime", 2),
                         ("torchscript", 2)}
    assert [rows[k]["status"] for k in (("onnxruntime", 1), ("pytorch", 2))] == ["ok", "ok"]
    assert rows["onnxruntime", 2]["status"].startswith("failed: corrupt ONNX file ")
    for bs in (1, 2):
        assert rows["torchscript", bs]["status"].startswith("failed: this torch cannot load ")
    assert read(ctx, "infer", "summary.json")["onnxruntime_b1"]["results"]
    metrics = read(ctx, "evaluate", "metrics.json")
    assert metrics["pytorch_b1"]["metrics"]["segm"]["AP"] > 0.3
    assert metrics["onnxruntime_b1"]["metrics"]["segm"]["AP"] > 0.3
    bench = {(r["backend"], r["batch_size"]): bool(r.get("failed"))
             for r in read(ctx, "benchmark", "benchmark.json")["rows"]}
    assert bench == {("pytorch", 1): False, ("pytorch", 2): False, ("onnxruntime", 1): False, ("onnxruntime", 2): True,
                     ("torchscript", 1): True, ("torchscript", 2): True}
    report = (ctx.run_dir / "report.md").read_text()
    assert report.count("| onnxruntime | 1 |") == 2  # its speed row and its verify row
    assert "| onnxruntime | 2 | - | - | - | - | failed: corrupt ONNX file " in report  # its verify row
    assert "- onnxruntime_b2 verify: corrupt ONNX file" in report
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for backend, bs in (("torchscript", 1), ("torchscript", 2), ("onnxruntime", 2)):  # one line each
        assert sum(m.startswith(f"verify {backend} batch {bs} failed: ") for m in errors) == 1


def test_a_verify_mismatch_leaves_every_backend_scored_and_reported(exported, make_ctx, tmp_path):
    """Zero tolerance: onnxruntime never matches eager bit for bit, so it fails verify; it is still inferred, scored,
    timed and reported, and the run ends with an error naming the mismatch."""
    ctx = copied(exported, make_ctx, tmp_path, LATER, "deploy.verify.atol=0", "deploy.batch_sizes=[1]")
    with pytest.raises(DeployError, match=r"\d+ detection\(s\) of eager PyTorch and this backend unmatched") as err:
        run_pipeline(ctx.cfg, ctx=ctx)
    assert "onnxruntime_b1" in str(err.value) and "\n" not in str(err.value)
    rows = {(r["backend"], r["batch"]): r["status"] for r in read(ctx, "verify", "verify.json")["rows"]}
    assert rows["onnxruntime", 1] == "FAIL"
    metrics = read(ctx, "evaluate", "metrics.json")
    assert {"pytorch_b1", "torchscript_b1", "onnxruntime_b1"} <= set(metrics)
    assert metrics["onnxruntime_b1"]["metrics"]["segm"]["AP"] > 0.3
    assert {r["backend"] for r in read(ctx, "benchmark", "benchmark.json")["rows"] if not r.get("failed")} == {
        "pytorch", "torchscript", "onnxruntime"}
    assert "| onnxruntime | 1 |" in (ctx.run_dir / "report.md").read_text()


def test_a_backend_evaluate_cannot_score_leaves_the_others_scored(exported, make_ctx, tmp_path, caplog):
    ctx = copied(exported, make_ctx, tmp_path, "stages=[infer]", "deploy.batch_sizes=[1]")
    run_pipeline(ctx.cfg, ctx=ctx)
    ctx.path("evaluate", "onnxruntime_b1.json").unlink()  # its raw outputs were deleted after scoring
    ctx = make_ctx(*SETTINGS, "stages=[evaluate,benchmark,report]", "deploy.batch_sizes=[1]", run_dir=ctx.run_dir)
    with caplog.at_level(logging.ERROR), pytest.raises(DeployError) as err:
        run_pipeline(ctx.cfg, ctx=ctx)
    message = str(err.value)
    assert message.startswith("infer/onnxruntime_b1 has neither all raw outputs nor ") and "\n" not in message
    assert "onnxruntime_b1 failed in evaluate" in message
    metrics = read(ctx, "evaluate", "metrics.json")
    assert metrics["pytorch_b1"]["metrics"]["segm"]["AP"] > 0.3 and metrics["torchscript_b1"]["metrics"]
    assert metrics["onnxruntime_b1"]["failed"].startswith("infer/onnxruntime_b1 has neither")
    rows = {r["backend"]: r for r in read(ctx, "benchmark", "benchmark.json")["rows"]}
    assert rows["onnxruntime"]["AP"] is None and rows["onnxruntime"]["mean_ms"] > 0  # timed, not scored
    assert rows["pytorch"]["AP"] > 0.3
    assert "- onnxruntime_b1 evaluate: infer/onnxruntime_b1 has neither" in (ctx.run_dir / "report.md").read_text()
    assert sum(m.getMessage().startswith("evaluate onnxruntime_b1 failed: ") for m in caplog.records
               if m.levelno == logging.ERROR) == 1
