"""Ascend 310P paths: ATC / torch_aie without their tools, and with stand-in atc and ais_bench on PATH."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap

import numpy as np
import pytest

from solo_npu.deploy import om
from solo_npu.deploy.benchmark import run_benchmark
from solo_npu.deploy.compile_310p import atc_command, run_compile
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import read_image_outputs, run_infer
from solo_npu.deploy.preprocess import run_preprocess

# Stand-in for ATC: records its argv and writes the .om (here: the path of the ONNX it was given).
ATC = """
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
log = os.environ["STANDIN_LOG"]
with open(os.path.join(log, "atc.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
with open(args["output"] + ".om", "w") as f:
    f.write(args["model"])
"""

# Stand-in for ais_bench: runs the ONNX named in the .om with onnxruntime over the input folder and
# writes what ais_bench writes: {basename}_{i}.bin per output and sumary.json.
AIS_BENCH = """
import json, os, sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
argv = sys.argv[1:]
opts = {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2)}
with open(os.path.join(os.environ["STANDIN_LOG"], "ais_bench.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\\n")
sess = ort.InferenceSession(Path(opts["model"]).read_text(), providers=["CPUExecutionProvider"])
shape = sess.get_inputs()[0].shape
out = Path(opts["output"]) / opts["output_dirname"]
out.mkdir(parents=True, exist_ok=True)
if "input" in opts:
    for path in sorted(Path(opts["input"]).glob("*.bin")):
        x = np.fromfile(path, dtype=np.float32).reshape(shape)
        for i, y in enumerate(sess.run(None, {"input": x})):
            y.tofile(out / f"{path.stem}_{i}.bin")
summary = {"NPU_compute_time": {"min": 1.5, "max": 2.5, "mean": 2.0, "median": 1.9, "percentile(99%)": 2.4},
           "H2D_latency": {"mean": 0.1}, "D2H_latency": {"mean": 0.1}, "throughput": 500.0 * shape[0]}
(out / "sumary.json").write_text(json.dumps(summary))
print("[INFO] throughput 1000*batchsize.mean({})/NPU_compute_time.mean(2.0): {}".format(shape[0], 500.0 * shape[0]))
"""


def _install(bin_dir, name, body):
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture(scope="module")
def exported_run(make_ctx, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("om_run")
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.compile.dynamic_batch=[1,2]", run_dir=run_dir)
    run_export(ctx)
    run_preprocess(ctx)
    return run_dir


def test_without_tools_writes_script_and_continues(make_ctx, exported_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no atc here
    ctx = make_ctx("deploy.backends=[onnxruntime,om,torch_aie]", "deploy.compile.dynamic_batch=[1,2]",
                   "deploy.compile.precision_mode=allow_fp32_to_fp16", run_dir=exported_run)
    result = run_compile(ctx)
    assert result["om"] == {} and result["torch_aie"] == {}
    assert any(m.startswith("atc not found on PATH") for m in result["messages"])
    assert any(m.startswith("torch_aie is not installed") for m in result["messages"])
    script = (exported_run / "compile_310p.sh").read_text()
    for bs in (1, 2):
        expected = atc_command(exported_run / "export" / f"model_b{bs}.onnx", exported_run / "compile" / f"model_b{bs}",
                               "input", bs, (128, 160), "Ascend310P3", "allow_fp32_to_fp16")
        assert shlex.join(expected) in script
        assert f"inputs = [torch_aie.Input(({bs}, 3, 128, 160))]" in script
    assert "--input_shape=input:-1,3,128,160 " in script and "--dynamic_batch_size=1,2" in script
    summary = run_infer(ctx)  # om and torch_aie are skipped with a log line, onnxruntime runs
    assert set(summary) == {"onnxruntime_b1", "onnxruntime_b2"}


def test_atc_and_ais_bench_standins(make_ctx, exported_run, monkeypatch, tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    _install(bin_dir, "atc", ATC)
    _install(bin_dir, "ais_bench", AIS_BENCH)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("STANDIN_LOG", str(log))
    ctx = make_ctx("deploy.backends=[onnxruntime,om]", "deploy.compile.precision_mode=force_fp16",
                   "deploy.compile.log=info", "deploy.om.launcher=ais_bench", run_dir=exported_run)
    compiled = run_compile(ctx)
    assert set(compiled["om"]) == {"1", "2"} and not compiled["messages"]
    calls = [json.loads(line) for line in (log / "atc.jsonl").read_text().splitlines()]
    assert calls[0] == ["--framework=5", f"--model={exported_run}/export/model_b1.onnx",
                        f"--output={exported_run}/compile/model_b1", "--input_format=NCHW",
                        "--input_shape=input:1,3,128,160", "--soc_version=Ascend310P3", "--log=info",
                        "--precision_mode=force_fp16"]
    assert calls[1][4] == "--input_shape=input:2,3,128,160"

    run_infer(ctx)
    runs = [json.loads(line) for line in (log / "ais_bench.jsonl").read_text().splitlines()]
    assert runs[0][:2] == ["--model", f"{exported_run}/compile/model_b1.om"]
    assert runs[0][2:4] == ["--input", f"{exported_run}/preprocess/bins"]
    assert runs[1][2:4] == ["--input", f"{exported_run}/infer/om_b2_inputs"]  # 8 images -> 4 batch files
    assert len(list((exported_run / "infer" / "om_b2_inputs").glob("*.bin"))) == 4
    assert "--batchsize" in runs[1] and runs[1][runs[1].index("--batchsize") + 1] == "2"
    info = json.loads((exported_run / "infer" / "om_b2" / "outputs.json").read_text())
    for stem in info["stems"]:
        for key in ("om_b1", "om_b2"):
            got = read_image_outputs(exported_run / "infer" / key, stem, info["output_names"], info["outputs"])
            ref = read_image_outputs(exported_run / "infer" / "onnxruntime_b1", stem, info["output_names"],
                                     info["outputs"])
            np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-5)
            np.testing.assert_array_equal(got["labels"], ref["labels"])

    metrics = run_evaluate(ctx)
    ap = {k: v["metrics"]["segm"]["AP"] for k, v in metrics.items()}
    assert ap["om_b1"] == pytest.approx(ap["onnxruntime_b1"], abs=1e-6) and ap["om_b1"] > 0.3
    assert ap["om_b2"] == pytest.approx(ap["onnxruntime_b1"], abs=1e-6)

    ctx.settings.backends = ["om"]
    bench = run_benchmark(ctx)
    assert [(r["backend"], r["batch_size"]) for r in bench["rows"]] == [("om", 1), ("om", 2)]
    assert bench["rows"][1]["mean_ms"] == 2.0 and bench["rows"][1]["p99_ms"] == 2.4
    assert bench["rows"][1]["throughput"] == 1000.0 and bench["rows"][1]["AP"] == pytest.approx(ap["om_b2"])
    perf = json.loads((log / "ais_bench.jsonl").read_text().splitlines()[-1])
    assert "--loop" in perf and "--input" not in perf


def test_parse_summary_from_log_and_output_listing(tmp_path):
    stdout = ("[INFO] NPU_compute_time (ms): min = 3.1, max = 4.0, mean = 3.5, median = 3.4, percentile(99%) = 3.9\n"
              "[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(3.5): 1142.86\n")
    assert om.parse_summary(tmp_path, stdout) == {"mean_ms": 3.5, "p50_ms": 3.4, "p99_ms": 3.9,
                                                   "throughput": 1142.86}
    for name in ("a_0.bin", "a_1.bin", "a_2.bin", "b_x_0.bin", "b_x_1.bin", "b_x_2.bin", "sumary.json"):
        (tmp_path / name).write_bytes(b"")
    assert om.list_output_basenames(tmp_path, 3) == ["a", "b_x"]
