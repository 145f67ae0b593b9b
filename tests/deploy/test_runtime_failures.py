"""Backends that fail while they run: an execution provider failing inside ``session.run``, a model that fails on
its input, a TorchScript file this torch cannot load; each is one line and the other backends go on."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile

import numpy as np
import pytest
import torch
from deploy_support import CPU, exported_ctx, tiny_onnx

from solo_npu.deploy import runners
from solo_npu.deploy.backends import BACKENDS
from solo_npu.deploy.benchmark import run_benchmark
from solo_npu.deploy.context import DeployError
from solo_npu.deploy.infer import run_infer


def failing_onnx(path, shape, outputs=("output",)):
    """A model that loads but fails inside ``session.run``: a Gather whose index comes from the input (1000 x its
    largest value) and is out of bounds, as a device out of memory or a kernel's error fails a run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMax", ["input"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["mk"]),
             helper.make_node("Cast", ["mk"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["idx", "one"], ["idx1"]),
             helper.make_node("Gather", ["data", "idx1"], ["g"], axis=0)]
    nodes += [helper.make_node("Identity", ["g"], [name]) for name in outputs]
    inits = [numpy_helper.from_array(np.array(1000.0, np.float32), "k"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.arange(3, dtype=np.float32), "data")]
    graph = helper.make_graph(nodes, "fails", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(path))
    return path


def ts_with_op_this_torch_lacks(src, dst):
    """``src`` (a traced TorchScript file) with its first ``torch.<op>(`` call renamed to an op no torch has, as a
    file saved by a newer torch that uses a newer operator (aten::rms_norm saved by torch 2.13 and loaded by torch
    2.1): torch.jit.load compiles the archive's code/__torch__/*.py and fails with "Unknown builtin op"."""
    import re

    call = re.compile(rb"(?<![\w.])torch\.([a-z]\w*)\(")
    renamed = False
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if not renamed and "/code/" in info.filename and info.filename.endswith(".py") and call.search(data):
                data = call.sub(lambda m: b"torch." + m.group(1) + b"_from_a_newer_torch(", data, count=1)
                renamed = True
            zout.writestr(info, data)
    assert renamed, "no torch.<op>( call in the archive's code"
    return dst


@pytest.fixture
def cann_fails_at_run(monkeypatch, providers):
    """onnxruntime-cann whose CANN provider starts (computing on the CPU here) and whose C session raises
    ``EPFail`` on its first run (aclmdlExecute failing, a device out of memory). The real Python ``Session.run``
    handles it (onnxruntime 1.32 capi/onnxruntime_inference_collection.py, lines 404-415): with fallback enabled
    (``_enable_fallback``, true after creation) it prints "EP Error ...", calls
    ``set_providers(self._fallback_providers)``, a CPU session, and runs again there."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

    class FailsOnce:
        def __init__(self, sess):
            self.sess, self.failed = sess, False

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, *args):
            if not self.failed:
                self.failed = True
                raise EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : CANN: aclmdlExecute failed")
            return self.sess.run(*args)

    class CannSession(onnxruntime.InferenceSession):
        def _create_inference_session(self, providers, provider_options, disabled_optimizers=None):
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            self.on_cann = "CANNExecutionProvider" in names
            kept = [p for p in providers if (p[0] if isinstance(p, tuple) else p) != "CANNExecutionProvider"]
            super()._create_inference_session(kept, None, disabled_optimizers)
            if self.on_cann:
                self._sess = FailsOnce(self._sess)

        def get_providers(self):
            return ["CANNExecutionProvider", *super().get_providers()] if self.on_cann else super().get_providers()

    providers("CANNExecutionProvider")
    monkeypatch.setattr(onnxruntime, "InferenceSession", CannSession)
    return CannSession


def test_provider_failing_inside_run_is_an_error_not_a_silent_cpu_run(make_ctx, cann_fails_at_run, tmp_path,
                                                                     capsys):
    """The session's run-time fallback is disabled, so the failure is the backend's (one line), never a run on
    the CPU reported as npu / fp16."""
    ctx = make_ctx("deploy.backends=[onnxruntime]")
    backend = BACKENDS["onnxruntime"](ctx)
    path = tiny_onnx(tmp_path / "tiny.onnx", outputs=ctx.adapter.output_names)
    runner = backend.runner(1, {"files": {"onnx": {"1": str(path)}}})
    assert runner.session.get_providers()[0] == "CANNExecutionProvider"
    with pytest.raises(DeployError) as err:
        runner(np.zeros((1, 3, 8, 8), np.float32))
    message = str(err.value)
    assert "\n" not in message and "EP_FAIL : CANN: aclmdlExecute failed" in message
    assert "tiny.onnx" in message and "CANNExecutionProvider" in message
    assert "Falling back" not in capsys.readouterr().out
    assert runner.session.get_providers()[0] == "CANNExecutionProvider"  # no CPU session behind the label
    assert (backend.device, backend.precision) == ("npu:0", "fp16")


def test_model_failing_on_its_input_is_one_deploy_error_line(tmp_path):
    """onnxruntime's InvalidArgument from a kernel (Gather index out of bounds) is one DeployError line naming the
    file and the provider; any other in-process runner's failure too."""
    path = failing_onnx(tmp_path / "fails.onnx", (1, 3, 8, 8))
    runner = runners.OnnxRuntimeRunner(path, ["output"], CPU, requested="cpu")
    with pytest.raises(DeployError) as err:
        runner(np.ones((1, 3, 8, 8), np.float32))
    message = str(err.value)
    assert "\n" not in message and "fails.onnx" in message and "CPUExecutionProvider" in message
    assert "Gather" in message and "out of data bounds" in message

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    with pytest.raises(DeployError, match=r"^pytorch on cpu: .*RuntimeError: CUDA out of memory. Tried to allocate "
                                          r"2.00 GiB$"):
        runners.PyTorchRunner(Broken(), ["output"], CPU)(np.ones((1, 3, 8, 8), np.float32))


def test_unloadable_torchscript_is_one_line_naming_the_torch_that_saved_it(tmp_path):
    class Relu(torch.nn.Module):
        def forward(self, x):
            return (torch.relu(x),)

    good = tmp_path / "good.ts"
    torch.jit.trace(Relu(), torch.randn(1, 3, 8, 8)).save(str(good))
    newer = ts_with_op_this_torch_lacks(good, tmp_path / "newer.ts")
    with pytest.raises(DeployError) as err:
        runners.TorchScriptRunner(newer, ["output"], CPU, saved_with="9.9.0")
    message = str(err.value)
    assert "\n" not in message and "newer.ts" in message
    assert "Unknown builtin op: aten::relu_from_a_newer_torch" in message
    assert "saved by torch 9.9.0" in message and f"this is torch {torch.__version__}" in message
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DeployError) as err:
        runners.TorchScriptRunner(truncated, ["output"], CPU)
    message = str(err.value)
    assert "\n" not in message and "truncated.ts" in message and "PytorchStreamReader failed" in message
    assert "the torch that saved it is not recorded" in message and f"this is torch {torch.__version__}" in message


@pytest.fixture(scope="module")
def exported(make_ctx):
    """export (TorchScript and ONNX, batch 1 and 2) and preprocess of the fitted tiny model, for three backends."""
    return exported_ctx(make_ctx, "deploy.backends=[pytorch,torchscript,onnxruntime]", "deploy.benchmark.iters=1",
                        "deploy.benchmark.warmup=0", "deploy.benchmark.e2e_images=1", "deploy.infer.batch_sizes=[1]",
                        "deploy.infer.keep_raw=false")


def test_manifest_records_the_exporting_versions(exported):
    import onnx

    manifest = json.loads(exported.path("export", "manifest.json").read_text())
    assert manifest["exported_with"]["torch"] == torch.__version__
    assert manifest["exported_with"]["onnx"] == onnx.__version__
    assert manifest["opset"] == 13


def test_failing_backends_are_one_line_each_and_the_others_go_on(exported, make_ctx, tmp_path, caplog):
    """A TorchScript file saved by a newer torch and an ONNX that fails inside session.run: infer and benchmark
    record each as failed with one line, and eager PyTorch is still scored and timed."""
    run_dir = tmp_path / "run"
    shutil.copytree(exported.run_dir, run_dir)
    ctx = make_ctx("deploy.backends=[pytorch,torchscript,onnxruntime]", "deploy.benchmark.iters=1",
                   "deploy.benchmark.warmup=0", "deploy.benchmark.e2e_images=1", "deploy.infer.batch_sizes=[1]",
                   "deploy.infer.keep_raw=false", run_dir=run_dir)
    manifest_path = ctx.path("export", "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["exported_with"]["torch"] = "9.9.0"  # as a newer torch writes it
    manifest_path.write_text(json.dumps(manifest))
    for bs in (1, 2):
        ts = ctx.path("export", f"model_b{bs}.ts")
        ts_with_op_this_torch_lacks(ts, ts.with_suffix(".new"))
        ts.with_suffix(".new").replace(ts)
        failing_onnx(ctx.path("export", f"model_b{bs}.onnx"), (bs, 3, *ctx.settings.input_shape),
                     ctx.adapter.output_names)
    with caplog.at_level(logging.ERROR):
        summary = run_infer(ctx)
        bench = run_benchmark(ctx)
    assert "results" in summary["pytorch_b1"]
    for key, what in (("torchscript_b1", "saved by torch 9.9.0"), ("onnxruntime_b1", "out of data bounds")):
        assert what in summary[key]["failed"] and "\n" not in summary[key]["failed"], key
    failed = {(r["backend"], r["batch_size"]) for r in bench["rows"] if r.get("failed")}
    assert failed == {("torchscript", 1), ("torchscript", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    assert {r["backend"] for r in bench["rows"] if not r.get("failed")} == {"pytorch"}
    assert sum("failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 6


