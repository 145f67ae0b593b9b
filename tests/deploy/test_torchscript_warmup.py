"""TorchScript's timed runs start after its executor's profiling and optimising runs.

pytorch torch/csrc/jit/runtime/profiling_graph_executor_impl.cpp: the first ``torch_jit_num_profiled_runs`` calls
(``kDefaultNumProfiledRuns = 1``) run the profiling graph, the next one builds the optimised plan (and on CUDA
compiles its fused kernels). On an H200, SOLOv2 R50's TorchScript batch 1 with one warm-up run timed 161.8 ms mean
against a 17.2 ms median: the first timed run was the optimising one (711 ms).
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import torch
from torch import nn

from solo_npu.deploy.benchmark import time_model
from solo_npu.deploy.pipeline import run_pipeline
from solo_npu.deploy.runners import PyTorchRunner, TorchScriptRunner
from solo_npu.runtime import resolve_device


@contextmanager
def profiled_runs(runs: int):
    old = torch._C._jit_set_num_profiled_runs(runs)
    try:
        yield
    finally:
        torch._C._jit_set_num_profiled_runs(old)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x).relu()
        return y.amax(dim=(2, 3)), y


def _counted(runner):
    """The runner with a count of its calls."""
    calls = []
    run = runner.run

    def counting(images):
        calls.append(images.shape)
        return run(images)

    runner.run = counting
    return calls


def test_torchscript_is_timed_after_its_profiling_and_optimising_runs(tmp_path):
    images = torch.randn(1, 3, 16, 16).numpy()
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(TwoOutputs().eval(), torch.from_numpy(images)), str(path))
    device = resolve_device("cpu")
    for profiled in (1, 3):
        with profiled_runs(profiled):
            runner = TorchScriptRunner(path, ["scores", "masks"], device)
            calls = _counted(runner)
            latencies = time_model(runner, images, warmup=1, iters=2)
        assert len(latencies) == 2
        assert len(calls) == profiled + 1 + 2, (profiled, len(calls))
        # more warm-up than the executor needs is kept as asked
        with profiled_runs(profiled):
            runner = TorchScriptRunner(path, ["scores", "masks"], device)
            calls = _counted(runner)
            time_model(runner, images, warmup=5, iters=1)
        assert len(calls) == 6

    eager = PyTorchRunner(TwoOutputs(), ["scores", "masks"], device)
    calls = _counted(eager)
    time_model(eager, images, warmup=1, iters=2)
    assert len(calls) == 3  # eager has no executor to warm: what was asked


def test_report_names_the_rows_that_warmed_up_longer(make_ctx):
    ctx = make_ctx("deploy.backends=[pytorch,torchscript]", "deploy.export_formats=[torchscript]",
                   "stages=[export,preprocess,benchmark,report]", "deploy.batch_sizes=[1]",
                   "deploy.benchmark.warmup=1", "deploy.benchmark.iters=1", "deploy.benchmark.e2e_images=0")
    run_pipeline(ctx.cfg, ctx=ctx)
    bench = json.loads(ctx.path("benchmark", "benchmark.json").read_text())
    warmups = {r["backend"]: r["warmup"] for r in bench["rows"]}
    assert warmups == {"pytorch": 1, "torchscript": torch._C._jit_get_num_profiled_runs() + 1}
    timing = next(line for line in (ctx.run_dir / "report.md").read_text().splitlines()
                  if line.startswith("- timing:"))
    assert timing.startswith(f"- timing: 1 warm-up run excluded (torchscript b1: {warmups['torchscript']}: ")
