"""The evaluate stage scores the backends and batch sizes the run asks for, not every ``infer/*/outputs.json`` in
the run directory: re-running ``stages=[infer,evaluate]`` with other backends (``run_dir=`` of an earlier run) used
to score and report the earlier run's outputs beside the new ones as if they were this run's."""

from __future__ import annotations

import json
import logging

import pytest

from solo_npu.deploy.context import DeployError
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import run_infer
from solo_npu.deploy.preprocess import run_preprocess


def test_only_the_asked_backends_are_scored(make_ctx, caplog):
    first = make_ctx("deploy.backends=[pytorch,onnxruntime]", "deploy.export_formats=[onnx]",
                     "deploy.infer.batch_sizes=[1]")
    for stage in (run_export, run_preprocess, run_infer):
        stage(first)
    assert sorted(p.parent.name for p in first.path("infer").glob("*/outputs.json")) == [
        "onnxruntime_b1", "pytorch_b1"]

    again = make_ctx("deploy.backends=[onnxruntime]", "deploy.export_formats=[onnx]", "deploy.infer.batch_sizes=[1]",
                     run_dir=first.run_dir)
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.evaluate"):
        summary = run_evaluate(again)
    assert set(summary) == {"onnxruntime_b1"}
    assert set(json.loads(again.path("evaluate", "metrics.json").read_text())) == {"onnxruntime_b1"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("evaluate: not scoring pytorch_b1: earlier outputs under ")

    with pytest.raises(DeployError, match=r"^no inference outputs under .* for deploy.backends=\['torchscript'\] at "
                                          r"batch sizes \[1\]: run stages=\[infer\] first$"):
        run_evaluate(make_ctx("deploy.backends=[torchscript]", "deploy.infer.batch_sizes=[1]", run_dir=first.run_dir))
