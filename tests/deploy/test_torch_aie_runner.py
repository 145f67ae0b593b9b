"""torch_aie from another Python: the shipped runner compiles and runs in a second interpreter that has a
torch_aie stand-in (and not this project), and the pipeline scores its outputs like any backend."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from deploy_standins import FAKE_TORCH_AIE, python_with_fake_torch_aie

from solo_npu.deploy.backends import RUNNER_FILE
from solo_npu.deploy.benchmark import run_benchmark
from solo_npu.deploy.compile_310p import run_compile
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import read_image_outputs, run_infer
from solo_npu.deploy.preprocess import run_preprocess
from solo_npu.deploy.runners import TorchAieRunner
from solo_npu.runtime import DeviceInfo


def test_runner_is_self_contained_python39():
    source = RUNNER_FILE.read_text()
    ast.parse(source, feature_version=(3, 9))  # torch_aie 6.3 ships for Python 3.9
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
                if not isinstance(node, ast.ImportFrom) or node.module != "__future__"}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"}
    assert imported <= {"argparse", "json", "os", "sys", "time", "numpy", "torch", "torch_aie"}


def test_torch_aie_in_another_python(make_ctx, tmp_path, monkeypatch):
    python = python_with_fake_torch_aie(tmp_path / "py")
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("STANDIN_LOG", str(log))
    probe = subprocess.run([str(python), "-I", "-c", "import torch_aie, torch\n"
                            "try:\n import solo_npu\nexcept ImportError:\n print('isolated')"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "isolated", probe.stderr  # torch_aie and torch there, the project not

    ctx = make_ctx("deploy.backends=[onnxruntime,torch_aie]", f"deploy.torch_aie.python={python}",
                   "deploy.device_id=2", "deploy.export_formats=[torchscript,onnx]", "deploy.benchmark.e2e_images=0")
    run_export(ctx)
    run_preprocess(ctx)
    compiled = run_compile(ctx)
    assert set(compiled["torch_aie"]) == {"1", "2"} and not compiled["messages"]
    events = [json.loads(line) for line in (log / "torch_aie.jsonl").read_text().splitlines()]
    compiles = [e for e in events if e["call"] == "compile"]
    assert [c["shapes"] for c in compiles] == [[[1, 3, 128, 160]], [[2, 3, 128, 160]]]
    assert {(c["precision_policy"], c["soc_version"], c["allow_tensor_replace_int"]) for c in compiles} == {
        ("FP16", "Ascend310P3", True)}
    # the runner names the chip and the policy itself, whatever torch_aie's defaults (Ascend310P3, PREF_FP32)
    assert all({"precision_policy", "soc_version"} <= set(c["keywords"]) for c in compiles)
    assert {e["device_id"] for e in events if e["call"] == "set_device"} == {2}
    rows = json.loads(ctx.path("verify", "verify_compiled.json").read_text())["rows"]
    assert [(r["backend"], r["batch"], r["status"]) for r in rows] == [("torch_aie", 1, "ok"), ("torch_aie", 2, "ok")]
    # FP16: the stand-in rounds weights, inputs and outputs to float16; within deploy.verify.fp16, not float32's
    assert all(r["precision"] == "fp16" and 1e-5 < r["score_max_diff"] < 2e-2 for r in rows)

    summary = run_infer(ctx)
    assert summary["torch_aie_b2"]["timing"] == "model only" and summary["torch_aie_b2"]["device"] == "npu:2"
    assert {e["device"] for e in [json.loads(x) for x in (log / "torch_aie.jsonl").read_text().splitlines()]
            if e["call"] == "Stream"} == {"npu:2"}
    info = json.loads(ctx.path("infer", "torch_aie_b2", "outputs.json").read_text())
    for stem in info["stems"]:
        got = read_image_outputs(ctx.path("infer", "torch_aie_b2"), stem, info["output_names"], info["outputs"])
        ref = read_image_outputs(ctx.path("infer", "onnxruntime_b1"), stem, info["output_names"], info["outputs"])
        np.testing.assert_array_equal(got["scores"], got["scores"].astype(np.float16))
        for label in np.unique(ref["labels"]):  # near ties may swap places, scores near the cuts come and go
            want = np.sort(ref["scores"][(ref["labels"] == label) & (ref["scores"] > 0.1)])[::-1]
            np.testing.assert_allclose(np.sort(got["scores"][got["labels"] == label])[::-1][:len(want)], want,
                                       atol=2e-3)

    metrics = run_evaluate(ctx)
    ap = {k: v["metrics"]["segm"]["AP"] for k, v in metrics.items()}
    assert ap["torch_aie_b1"] == pytest.approx(ap["onnxruntime_b1"], abs=0.01)  # FP16: float16 weights and I/O
    assert ap["torch_aie_b2"] == pytest.approx(ap["onnxruntime_b1"], abs=0.01)

    bench = run_benchmark(ctx)
    rows = {(r["backend"], r["batch_size"]): r for r in bench["rows"]}
    aie = rows[("torch_aie", 2)]
    assert aie["timing"] == "model only" and aie["iters"] == 2 and aie["mean_ms"] > 0
    assert aie["throughput"] == pytest.approx(1000 * 2 / aie["mean_ms"])


@pytest.fixture
def torch_aie_here(tmp_path, monkeypatch):
    """The torch_aie stand-in imported in this process; what it patches in torch is restored afterwards."""
    package = tmp_path / "torch_aie"
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_TORCH_AIE)
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path))
    monkeypatch.setattr(torch.Tensor, "to", torch.Tensor.to)
    monkeypatch.setattr(torch.jit, "load", torch.jit.load)
    spec = importlib.util.spec_from_file_location("torch_aie", package / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "torch_aie", module)
    return module


class Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def compiled_double(torch_aie, path, shape):
    torch_aie.compile(torch.jit.script(Double()), inputs=[torch_aie.Input(shape)],
                      precision_policy=torch_aie.PrecisionPolicy.FP32, soc_version="Ascend310P3").save(str(path))
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_stand_in_compile_has_the_documented_signature(torch_aie_here, tmp_path):
    """MindIE Torch's compile (torch_aie's successor; hiascend.com mindie/1.0.RC1 mindie_torch0144): inputs
    required, precision_policy PREF_FP32 and soc_version "Ascend310P3" by default (ModelZoo's Yolov5 torch_aie export
    calls it without soc_version), and a fixed set of keywords, so an unknown one is Python's TypeError."""
    aie = torch_aie_here
    script = torch.jit.script(Double())
    aie.compile(script, inputs=[aie.Input((1, 3, 4, 5))], precision_policy=aie.PrecisionPolicy.FP16)
    [event] = [json.loads(line) for line in (tmp_path / "torch_aie.jsonl").read_text().splitlines()]
    assert (event["soc_version"], event["precision_policy"], event["keywords"]) == (
        "Ascend310P3", "FP16", ["inputs", "precision_policy"])
    aie.compile(script, [aie.Input((1, 3, 4, 5))])
    assert json.loads((tmp_path / "torch_aie.jsonl").read_text().splitlines()[-1])["precision_policy"] == "PREF_FP32"
    with pytest.raises(TypeError, match=r"^compile\(\) got an unexpected keyword argument 'no_such_option'$"):
        aie.compile(script, inputs=[aie.Input((1, 3, 4, 5))], soc_version="Ascend310P3", no_such_option=1)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'inputs'"):
        aie.compile(script, soc_version="Ascend310P3")
    defaults = {k: p.default for k, p in inspect.signature(aie.compile).parameters.items()}
    assert defaults == {"module": inspect.Parameter.empty, "inputs": inspect.Parameter.empty,
                        "precision_policy": aie.PrecisionPolicy.PREF_FP32, "truncate_long_and_double": True,
                        "require_full_compilation": False, "allow_tensor_replace_int": False, "min_block_size": 3,
                        "torch_executed_ops": [], "soc_version": "Ascend310P3", "optimization_level": 0}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_in_process_runner_keeps_a_lone_output_whole(torch_aie_here, tmp_path):
    """A compiled module returns what its TorchScript returns: one Tensor for a one-output model (Ascend
    ModelZoo SOLOV2 solov2_inference.py iterates the result); it must not be split along the batch."""
    path = compiled_double(torch_aie_here, tmp_path / "double.ts", (2, 3, 4, 5))
    runner = TorchAieRunner(path, ["out"], DeviceInfo("cpu", torch.device("cpu"), 0), device_id=0)
    images = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    out = runner(images)
    assert list(out) == ["out"] and out["out"].shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out["out"], 2 * images)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_npu_tensors_of_the_stand_in_allow_host_copies_only(torch_aie_here, tmp_path):
    """MindIE Torch's "npu" device supports copies between host and device only, and a compiled module takes and
    returns "npu" tensors (MindIE Torch development guide, mindie_torch0016 / mindie_torch0017)."""
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    on_npu = x.to("npu:0")
    assert on_npu.shape == (2, 3) and on_npu.dtype == torch.float32
    for operation in (lambda t: t + 1, lambda t: t.sum(), lambda t: t.numpy(), lambda t: t[0],
                      lambda t: t.to(torch.float16), lambda t: t.detach(), lambda t: list(t)):
        with pytest.raises(RuntimeError, match="supports only copies between host and device"):
            operation(on_npu)
    for back in (on_npu.to("cpu"), on_npu.cpu()):
        assert type(back) is torch.Tensor
        torch.testing.assert_close(back, x)
    module = torch.jit.load(str(compiled_double(torch_aie_here, tmp_path / "double.ts", (2, 3)))).eval()
    out = module(on_npu)
    with pytest.raises(RuntimeError, match="supports only copies between host and device"):
        out * 1
    torch.testing.assert_close(out.to("cpu"), 2 * x)
    with pytest.raises(RuntimeError, match="takes 'npu' tensors"):
        module(x)


def test_a_trace_made_on_an_accelerator_is_not_compiled(torch_aie_here, make_ctx, tmp_path):
    """torch_aie compiles a CPU trace (the Ascend ModelZoo SOLOV2 torch_aie guide traces with the model on the CPU,
    solov2_pth2torchscript.py): TorchScript traced on a GPU keeps that device in its tensors and device arguments,
    so the compile stage says so in one line instead of handing it on."""
    ctx = make_ctx("deploy.backends=[torch_aie]", "deploy.export_formats=[torchscript]", "deploy.batch_sizes=[1]")
    run_export(ctx)
    manifest_path = ctx.path("export", "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["traced_on"] == "cpu"
    manifest["traced_on"] = "cuda:0"
    manifest_path.write_text(json.dumps(manifest))
    compiled = run_compile(ctx)
    assert compiled["torch_aie"] == {}
    assert any("traced on cuda:0" in m and "device=cpu" in m for m in compiled["messages"]), compiled["messages"]


def test_in_process_benchmark_loads_each_compiled_module_once(torch_aie_here, make_ctx, monkeypatch):
    """The benchmark's latency loop runs the module its end-to-end runner loaded: one copy on the device (its peak
    memory is one model's) and the end-to-end timing runs the module the loop warmed."""
    ctx = make_ctx("deploy.backends=[torch_aie]", "deploy.export_formats=[torchscript]", "deploy.batch_sizes=[1]",
                   "deploy.benchmark.iters=2", "deploy.benchmark.warmup=1")
    run_export(ctx)
    run_preprocess(ctx)
    assert set(run_compile(ctx)["torch_aie"]) == {"1"}
    loads = []
    real_load = torch.jit.load

    def counting_load(path, *args, **kwargs):
        loads.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", counting_load)
    bench = run_benchmark(ctx)
    [row] = [r for r in bench["rows"] if r["backend"] == "torch_aie"]
    assert row["iters"] == 2 and row["mean_ms"] > 0
    assert [p for p in loads if p.endswith("_torch_aie.ts")] == [str(ctx.path("compile", "model_b1_torch_aie.ts"))]
