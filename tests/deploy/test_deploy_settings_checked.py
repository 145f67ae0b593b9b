"""Deploy settings that the pipeline or the tools cannot use are one line before any stage: a batch written into
deploy.input_shape that would be dropped, a channel count other than 3, zero or negative image counts, a negative
warm-up or no timed iteration (ais_bench refuses those: Ascend/tools ais_bench/infer/__main__.py,
check_nonnegative_integer for --warmup_count, check_positive_integer for --loop), and an onnxruntime graph
optimisation level it does not have (it became ENABLE_ALL silently)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from solo_npu.deploy.context import DeployError, resolve_settings
from solo_npu.deploy.runners import ort_optimization_level


@pytest.mark.parametrize("override, message", [
    ("deploy.input_shape=[4,3,128,160]", r"its batch 4 is not one of the batch sizes \[1, 2\] and would not be "
                                         r"used: give deploy.input_shape=\[128,160\] deploy.batch_sizes=\[4\]"),
    ("deploy.input_shape=[1,1,128,160]", r"the models take 3 channels"),
    ("deploy.num_images=0", r"deploy.num_images=0: give a positive number of images, or null for all"),
    ("deploy.num_images=-1", r"deploy.num_images=-1: give a positive"),
    ("deploy.verify.num_images=0", r"deploy.verify.num_images=0: give a positive integer"),
    ("deploy.benchmark.warmup=-1", r"deploy.benchmark.warmup=-1: give a non-negative integer"),
    ("deploy.benchmark.iters=0", r"deploy.benchmark.iters=0: give a positive integer"),
    # torch's TorchScript-based exporter fails below 11 with a TypeError after printing the whole graph
    ("deploy.opset=10", r"deploy.opset=10: the models export at opset 11 or later"),
])
def test_unusable_settings_are_one_line(deploy_cfg, override: str, message: str) -> None:
    with pytest.raises(DeployError, match=message) as info:
        resolve_settings(deploy_cfg(override), 32)
    assert "\n" not in str(info.value)


def test_input_shape_batch_one_or_with_explicit_batch_sizes_is_taken(deploy_cfg) -> None:
    assert resolve_settings(deploy_cfg("deploy.input_shape=[1,3,128,160]"), 32).input_shape == (128, 160)
    settings = resolve_settings(deploy_cfg("deploy.input_shape=[4,3,128,160]", "deploy.batch_sizes=[4]"), 32)
    assert settings.input_shape == (128, 160) and settings.batch_sizes == [4]
    assert resolve_settings(deploy_cfg("deploy.opset=11"), 32).opset == 11


def test_onnxruntime_optimization_levels() -> None:
    assert ort_optimization_level("all") == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert ort_optimization_level("Basic") == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert ort_optimization_level("disable_all") == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with pytest.raises(DeployError, match=r"graph_optimization_level=basci: choose one of disable_all, basic"):
        ort_optimization_level("basci")
