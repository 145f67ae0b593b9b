"""What a benchmark row says of how and where it ran, and the onnxruntime settings behind it: the memory a row
reads, the thread settings of a row, inter-op threads and the execution mode, provider options onnxruntime would
ignore or refuse."""

from __future__ import annotations

import logging

import pytest
import torch
from deploy_support import CPU, NPU0, exported_ctx, tiny_onnx

from solo_npu.config.deploy_schema import check_deploy_overrides, unknown_key
from solo_npu.deploy import runners
from solo_npu.deploy.backends import BACKENDS
from solo_npu.deploy.benchmark import memory_sampler, run_benchmark
from solo_npu.deploy.context import DeployError
from solo_npu.deploy.report import build_report
from solo_npu.runtime import DeviceInfo


@pytest.fixture(scope="module")
def exported(make_ctx):
    """ONNX export (batch 1 and 2) and preprocess of the fitted tiny model, benchmarked once per timing."""
    return exported_ctx(make_ctx, "deploy.backends=[pytorch,onnxruntime]", "deploy.export_formats=[onnx]",
                        "deploy.benchmark.iters=1", "deploy.benchmark.warmup=0", "deploy.benchmark.e2e_images=1",
                        "deploy.onnxruntime.inter_op_num_threads=2")


def test_benchmark_rows_and_report_state_the_thread_settings(exported):
    bench = run_benchmark(exported)
    rows = {r["backend"]: r for r in bench["rows"] if r["batch_size"] == 1}
    assert rows["pytorch"]["threads"] == {"torch_num_threads": torch.get_num_threads()}
    assert rows["onnxruntime"]["threads"] == {"intra_op_num_threads": 1, "inter_op_num_threads": 2,
                                              "execution_mode": "parallel", "graph_optimization_level": "all",
                                              "allow_spinning": None}
    text, data = build_report(exported)
    assert data["benchmark"]["rows"][0]["threads"] is not None
    assert "| threads |" in text
    assert f"torch {torch.get_num_threads()}" in text
    assert "intra 1, inter 2, parallel, opt all, spin default" in text
    assert "- onnxruntime on the CPU (b1, b2): its threads busy-wait after each run" in text  # e2e timed spinning


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_allow_spinning_reaches_both_thread_pools(tmp_path, spinning, entry):
    """deploy.onnxruntime.allow_spinning=false: onnxruntime's threads stop busy-waiting after a run, which on 2 cores
    halved the e2e rate of an in-process pipeline (their spinning took the cores from the post-processing)."""
    runner = runners.OnnxRuntimeRunner(tiny_onnx(tmp_path / "tiny.onnx"), ["output"], CPU, {"allow_spinning": spinning})
    options = runner.session.get_session_options()
    for pool in ("intra_op", "inter_op"):
        assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == entry
    assert runner.settings["allow_spinning"] is spinning


def test_memory_of_a_cpu_session_is_read_from_the_process_on_a_cuda_run(make_ctx, tmp_path, monkeypatch):
    """Run device CUDA, onnxruntime without the CUDA provider (on the CPU): the row says process RSS, so the sampler
    reads the process, not torch's CUDA allocator (which reports 300 MiB here)."""
    for name, value in (("memory_allocated", lambda i: 300 * 2**20), ("max_memory_allocated", lambda i: 300 * 2**20),
                        ("reset_peak_memory_stats", lambda i: None)):
        monkeypatch.setattr(torch.cuda, name, value)
    ctx = make_ctx("deploy.backends=[onnxruntime]")
    _ = ctx.adapter  # built while the context's device is still the CPU
    ctx.device = DeviceInfo("cuda", torch.device("cuda", 0), 0)
    backend = BACKENDS["onnxruntime"](ctx)
    backend.runner(1, {"files": {"onnx": {"1": str(tiny_onnx(tmp_path / "tiny.onnx"))}}})  # no outputs are read
    sampler, source = memory_sampler(ctx, backend)
    with sampler as memory:
        pass
    assert (backend.device, source, memory.device.type) == ("cpu", "process RSS", "cpu")
    assert memory.peak_mb != 300


def test_inter_op_threads_run_the_session_in_parallel_mode(tmp_path, monkeypatch, providers, caplog):
    """onnxruntime ignores inter_op_num_threads in sequential execution mode (onnxruntime_c_api.h,
    SetInterOpNumThreads), its default: a count set runs the session in parallel mode, and where onnxruntime makes
    it sequential again (the CUDA provider, inference_session.cc RegisterExecutionProvider) a WARNING says so."""
    import onnxruntime

    path = tiny_onnx(tmp_path / "tiny.onnx")
    runner = runners.OnnxRuntimeRunner(path, ["output"], CPU, {"inter_op_num_threads": 2}, requested="cpu")
    options = runner.session.get_session_options()
    assert (options.inter_op_num_threads, options.execution_mode) == (2, onnxruntime.ExecutionMode.ORT_PARALLEL)
    assert runner.settings["execution_mode"] == "parallel"
    runner = runners.OnnxRuntimeRunner(path, ["output"], CPU, {}, requested="cpu")
    assert runner.session.get_session_options().execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL

    class CudaRuns(onnxruntime.InferenceSession):  # a CUDA provider that starts, computing on the CPU here
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            kept = [p for p in providers if (p[0] if isinstance(p, tuple) else p) != "CUDAExecutionProvider"]
            super()._create_inference_session(kept, None, disabled_optimizers)
            self._sess_options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL  # what the C++ session does

        def get_providers(self):
            return ["CUDAExecutionProvider", *super().get_providers()]

    providers("CUDAExecutionProvider")
    monkeypatch.setattr(onnxruntime, "InferenceSession", CudaRuns)
    cuda = DeviceInfo("cuda", torch.device("cuda", 0), 0)
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runner = runners.OnnxRuntimeRunner(path, ["output"], cuda, {"inter_op_num_threads": 2}, requested="cuda")
    assert runner.settings["execution_mode"] == "sequential"
    assert "inter_op_num_threads=2 is ignored" in caplog.text and "sequential" in caplog.text


def test_misspelled_provider_options_stop_with_one_line_naming_the_valid_ones(make_ctx):
    why = unknown_key(["deploy", "onnxruntime", "provider_options", "npu", "precison_mode"])
    assert why is not None and "did you mean" in why and "precision_mode" in why and "npu_mem_limit" in why
    assert unknown_key(["deploy", "onnxruntime", "provider_options", "npu", "precision_mode"]) is None
    assert unknown_key(["deploy", "onnxruntime", "provider_options", "cuda", "gpu_mem_limit"]) is None
    line = check_deploy_overrides(["+deploy.onnxruntime.provider_options.cuda.gpu_mem_limt=1"])
    assert line is not None and "gpu_mem_limit" in line and "cudnn_conv_algo_search" in line
    with pytest.raises(DeployError, match=r"provider_options\.npu\.precison_mode.*did you mean.*precision_mode"):
        make_ctx("+deploy.onnxruntime.provider_options.npu.precison_mode=force_fp16")
    with pytest.raises(DeployError, match=r"precison_mode.*CANNExecutionProvider"):
        runners.ort_providers(CPU, {"npu": {"precison_mode": "force_fp16"}}, "cpu")


def test_provider_options_onnxruntime_will_not_use_are_named_in_a_warning(providers, caplog):
    opts = {"npu": {"precision_mode": "must_keep_origin_dtype"}, "cuda": {"gpu_mem_limit": 1}}
    providers("CANNExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        assert runners.ort_providers(CPU, opts, "cpu") == ["CPUExecutionProvider"]
    assert "precision_mode" in caplog.text and "gpu_mem_limit" in caplog.text and "ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runners.ort_providers(NPU0, opts, "npu")  # the CANN provider runs: only the CUDA options are ignored
    assert "gpu_mem_limit" in caplog.text and "precision_mode" not in caplog.text
    caplog.clear()
    providers()  # plain onnxruntime on an NPU host
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.runners"):
        runners.ort_providers(NPU0, opts, "npu")
    assert "install onnxruntime-cann" in caplog.text and "precision_mode" in caplog.text


def test_an_option_this_provider_release_refuses_is_an_error_not_a_cpu_run(tmp_path, monkeypatch, providers,
                                                                           capsys):
    """A released CANN provider parses precision_mode and refuses precision_mode_v2 as unknown
    (ProviderOptionsParser::Parse: 'Unknown provider option: "precision_mode_v2".'); onnxruntime then falls back to
    the CPU. An option the user set that the provider refuses stops the backend with one line."""
    import onnxruntime

    class ReleasedCann(onnxruntime.InferenceSession):
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            cann = [p[1] for p in providers if isinstance(p, tuple) and p[0] == "CANNExecutionProvider"]
            if cann and "precision_mode_v2" in cann[0]:
                self._fallback_providers = ["CPUExecutionProvider"]
                raise RuntimeError('Unknown provider option: "precision_mode_v2".')
            return super()._create_inference_session(["CPUExecutionProvider"], None, disabled_optimizers)

    providers("CANNExecutionProvider")
    monkeypatch.setattr(onnxruntime, "InferenceSession", ReleasedCann)
    with pytest.raises(DeployError) as err:
        runners.OnnxRuntimeRunner(tiny_onnx(tmp_path / "tiny.onnx"), ["output"], NPU0,
                                  {"provider_options": {"npu": {"precision_mode_v2": "origin"}}}, requested="npu")
    message = str(err.value)
    assert "\n" not in message and "precision_mode_v2" in message and "CANNExecutionProvider" in message
    assert "deploy.onnxruntime.provider_options.npu" in message
