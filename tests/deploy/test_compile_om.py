"""Ascend 310P paths: ATC / torch_aie without their tools, and with stand-in atc and ais_bench on PATH."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deploy_standins import AIS_BENCH, ATC, install_tool, put_tools_on_path, write_om

from solo_npu.deploy import compile_310p, om
from solo_npu.deploy.backends import OmBackend
from solo_npu.deploy.benchmark import run_benchmark
from solo_npu.deploy.compile_310p import atc_command, atc_error, run_compile, write_compile_script
from solo_npu.deploy.context import DeployError, write_json
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import read_image_outputs, run_infer
from solo_npu.deploy.preprocess import run_preprocess


@pytest.fixture(scope="module")
def exported_run(make_ctx, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("om_run")
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.compile.dynamic_batch=[1,2]", run_dir=run_dir)
    run_export(ctx)
    run_preprocess(ctx)
    return run_dir


def exported_onnx(run_dir, key):
    """The exported ONNX of a batch key: the manifest names it relative to the run directory."""
    return str(run_dir / json.loads((run_dir / "export" / "manifest.json").read_text())["files"]["onnx"][key])


def test_without_tools_writes_script_and_continues(make_ctx, exported_run, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no atc here
    ctx = make_ctx("deploy.backends=[onnxruntime,om,torch_aie]", "deploy.compile.dynamic_batch=[1,2]",
                   "deploy.compile.precision_mode=allow_fp32_to_fp16", run_dir=exported_run)
    result = run_compile(ctx)
    assert result["om"] == {} and result["torch_aie"] == {}
    assert any(m.startswith("atc not found on PATH") for m in result["messages"])
    assert any(m.startswith("torch_aie is not installed") for m in result["messages"])
    script = (exported_run / "compile_310p.sh").read_text()
    assert 'cd "$(dirname "$0")"' in script and str(exported_run) not in script  # works from a copied run dir
    for bs in (1, 2):
        expected = atc_command(f"export/model_b{bs}.onnx", f"compile/model_b{bs}",
                               "input", bs, (128, 160), "Ascend310P3", "allow_fp32_to_fp16")
        assert shlex.join(expected) in script
        assert (f'"$PYTHON" compile/torch_aie_runner.py compile --ts export/model_b{bs}.ts '
                f"--out compile/model_b{bs}_torch_aie.ts --batch-size {bs} --height 128 --width 160") in script
    assert (exported_run / "compile" / "torch_aie_runner.py").is_file()  # the run dir carries its runner
    assert "--input_shape=input:-1,3,128,160 " in script and "--dynamic_batch_size=1,2" in script
    summary = run_infer(ctx)  # om and torch_aie are skipped with a log line, onnxruntime runs
    assert set(summary) == {"onnxruntime_b1", "onnxruntime_b2"}


# CANN's ascend-toolkit/set_env.sh appends to variables without a default, in this form (PATH, LD_LIBRARY_PATH,
# PYTHONPATH, ...); under `set -u` an unset one stops the sourcing script with "unbound variable".
FAKE_SET_ENV = """export ASCEND_TOOLKIT_HOME={home}
export PATH=${{ASCEND_TOOLKIT_HOME}}/bin:$PATH
export LD_LIBRARY_PATH=${{ASCEND_TOOLKIT_HOME}}/lib64:$LD_LIBRARY_PATH
export PYTHONPATH=${{ASCEND_TOOLKIT_HOME}}/python/site-packages:$PYTHONPATH
"""


def test_compile_script_sources_cann_env_with_unset_variables_and_runs_atc(monkeypatch, tmp_path):
    """`bash compile_310p.sh` on a host where PYTHONPATH and LD_LIBRARY_PATH are unset reaches atc."""
    home, run_dir, log = tmp_path / "toolkit", tmp_path / "run", tmp_path / "log"
    for folder in (home / "bin", run_dir / "compile", run_dir / "export", log):
        folder.mkdir(parents=True)
    (run_dir / "export" / "model_b1.onnx").write_bytes(b"onnx")  # ATC checks that its --model exists
    install_tool(home / "bin", "atc", ATC)  # on PATH only once set_env.sh has run, as on a 310P host
    set_env = tmp_path / "set_env.sh"
    set_env.write_text(FAKE_SET_ENV.format(home=home))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH", "CANN_SET_ENV")}
    env.update(PATH="/usr/bin:/bin", STANDIN_LOG=str(log))
    cmd = atc_command("export/model_b1.onnx", "compile/model_b1", "input", 1, (128, 160))
    for default, extra in ((str(set_env), {}), (compile_310p.CANN_ENV, {"CANN_SET_ENV": str(set_env)})):
        monkeypatch.setattr(compile_310p, "CANN_ENV", default)  # the default install, or $CANN_SET_ENV
        script = write_compile_script(run_dir / "compile_310p.sh", [cmd], [])
        (log / "atc.jsonl").unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(script)], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
        calls = [json.loads(line) for line in (log / "atc.jsonl").read_text().splitlines()]
        assert calls == [{"argv": cmd[1:], "cwd": str(run_dir)}]
        assert (run_dir / "compile" / "model_b1.om").is_file()

    # Run again where the CANN names its .om by host: the first run's plain .om would otherwise be found first.
    old = run_dir / "compile" / "model_b1.om"
    subprocess.run(["bash", str(script)], env={**env, **extra, "STANDIN_ATC_SUFFIX": "_linux_x86_64"}, cwd=tmp_path,
                   check=True, capture_output=True)
    assert not old.exists() and om.find_om(run_dir / "compile" / "model_b1") == (
        run_dir / "compile" / "model_b1_linux_x86_64.om")


def test_compile_removes_an_earlier_runs_om_of_the_other_name(make_ctx, exported_run, monkeypatch, tmp_path):
    """ATC writes <stem>.om or <stem>_<os>_<arch>.om by CANN version (ATC Instructions, --output): an earlier run's
    file of the other name must not be taken for the one just compiled."""
    put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH)
    stale = exported_run / "compile" / "model_b1.om"
    stale.parent.mkdir(exist_ok=True)
    stale.write_text("an earlier CANN's model")
    monkeypatch.setenv("STANDIN_ATC_SUFFIX", "_linux_x86_64")
    ctx = make_ctx("deploy.backends=[om]", run_dir=exported_run)
    compiled = run_compile(ctx)
    assert compiled["om"]["1"] == "compile/model_b1_linux_x86_64.om"
    assert not stale.exists()


def test_om_needs_both_ais_bench_and_aclruntime(make_ctx, monkeypatch, tmp_path):
    """`python -m ais_bench` imports aclruntime, a wheel of its own (Ascend/tools,
    ais-bench_workload/tool/ais_bench/ais_bench/infer/interface.py: `import aclruntime`)."""
    site = tmp_path / "site"
    (site / "ais_bench").mkdir(parents=True)
    (site / "ais_bench" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # for the other interpreter below
    ctx = make_ctx("deploy.backends=[om]", run_dir=tmp_path / "run")
    write_json(ctx.path("compile", "compile.json"), {"om": {"1": "compile/model_b1.om"}})
    why = OmBackend(ctx).unavailable(1)  # the default launcher: python -m ais_bench in this interpreter
    assert why.startswith(f"ais_bench not available ({sys.executable} -m ais_bench): aclruntime not installed")
    other = tmp_path / "python3"
    other.symlink_to(sys.executable)  # another path: the check runs that interpreter
    assert om.ais_bench_missing([str(other), "-m", "ais_bench"]).startswith(
        f"ais_bench not available ({other} -m ais_bench): aclruntime not installed")
    (site / "aclruntime.py").write_text("")
    importlib.invalidate_caches()
    assert om.ais_bench_missing([sys.executable, "-m", "ais_bench"]) is None and OmBackend(ctx).unavailable(1) is None
    om._missing_in_other_python.cache_clear()
    assert om.ais_bench_missing([str(other), "-m", "ais_bench"]) is None
    (site / "ais_bench" / "__init__.py").unlink()
    (site / "ais_bench").rmdir()
    importlib.invalidate_caches()
    assert "ais_bench not installed" in om.ais_bench_missing([sys.executable, "-m", "ais_bench"])
    assert om.ais_bench_missing([str(tmp_path / "nowhere"), "-m", "ais_bench"]).endswith("nowhere not found")


def test_single_gear_dynamic_batch_is_refused(make_ctx, exported_run):
    """ATC's --dynamic_batch_size takes 2 to 100 gears (ATC Instructions, --dynamic_batch_size)."""
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.dynamic_batch=[4]", run_dir=exported_run)
    with pytest.raises(DeployError, match=r"dynamic_batch=\[4\]: ATC's --dynamic_batch_size needs 2 to 100"):
        run_compile(ctx)
    with pytest.raises(DeployError, match="needs 2 to 100"):
        atc_command("m.onnx", "m", "input", 1, (32, 32), dynamic_batch=list(range(1, 102)))


@pytest.mark.parametrize("suffix", ["", "_linux_x86_64"])
def test_atc_output_name_with_or_without_os_arch(tmp_path, suffix):
    """ATC --output=<stem> writes <stem>.om or <stem>_<os>_<arch>.om (ATC Instructions, --output)."""
    (tmp_path / f"model_b1{suffix}.om").write_text("")
    (tmp_path / "model_b10_linux_x86_64.om").write_text("")  # another stem that shares the prefix
    assert om.find_om(tmp_path / "model_b1") == tmp_path / f"model_b1{suffix}.om"
    assert om.find_om(tmp_path / "model_b2") is None


def test_atc_and_ais_bench_standins(make_ctx, exported_run, monkeypatch, tmp_path):
    log = put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH)
    monkeypatch.setenv("STANDIN_ATC_SUFFIX", "_linux_x86_64")  # CANN versions that name the .om by host
    ctx = make_ctx("deploy.backends=[onnxruntime,om]", "deploy.compile.precision_mode=force_fp16",
                   "deploy.compile.log=info", "deploy.om.launcher=ais_bench", run_dir=exported_run)
    compiled = run_compile(ctx)
    # recorded relative to the run directory, so that a copy of it (to the 310P host) runs its own files
    assert compiled["om"] == {k: f"compile/model_b{k}_linux_x86_64.om" for k in ("1", "2")}
    assert not compiled["messages"]
    calls = [json.loads(line) for line in (log / "atc.jsonl").read_text().splitlines()]
    assert calls[0]["cwd"] == str(exported_run)  # the commands of compile_310p.sh, run from the run dir
    assert calls[0]["argv"] == ["--framework=5", "--model=export/model_b1.onnx", "--output=compile/model_b1",
                                "--input_format=NCHW", "--input_shape=input:1,3,128,160", "--soc_version=Ascend310P3",
                                "--log=info", "--precision_mode=force_fp16"]
    assert calls[1]["argv"][4] == "--input_shape=input:2,3,128,160"

    # compile verified the .om files on the verify images with ais_bench, as infer runs them
    verify_runs = [json.loads(line) for line in (log / "ais_bench.jsonl").read_text().splitlines()]
    assert [r[r.index("--input") + 1] for r in verify_runs] == [f"{exported_run}/verify/inputs",
                                                                f"{exported_run}/verify/om_b2_inputs"]
    rows = json.loads((exported_run / "verify" / "verify_compiled.json").read_text())["rows"]
    assert [(r["backend"], r["batch"], r["status"]) for r in rows] == [("om", 1, "ok"), ("om", 2, "ok")]
    (log / "ais_bench.jsonl").unlink()

    summary = run_infer(ctx)
    # infer times the ais_bench subprocess as a whole, not the NPU compute time the benchmark reads from its summary
    assert {summary[k]["timing"] for k in ("om_b1", "om_b2")} == {
        "ais_bench run, wall time including its start, model load and file I/O"}
    runs = [json.loads(line) for line in (log / "ais_bench.jsonl").read_text().splitlines()]
    assert runs[0][:2] == ["--model", f"{exported_run}/compile/model_b1_linux_x86_64.om"]
    assert runs[0][2:4] == ["--input", f"{exported_run}/preprocess/bins"]
    assert runs[1][2:4] == ["--input", f"{exported_run}/infer/om_b2_inputs"]  # 8 images -> 4 batch files
    assert len(list((exported_run / "infer" / "om_b2_inputs").glob("*.bin"))) == 4
    assert "--batchsize" in runs[1] and runs[1][runs[1].index("--batchsize") + 1] == "2"
    info = json.loads((exported_run / "infer" / "om_b2" / "outputs.json").read_text())
    assert info["timing"] == "ais_bench run, wall time including its start, model load and file I/O"
    # force_fp16: the .om's outputs are float16 values (the stand-in rounds every tensor); each class has the same
    # number of candidates with about the same scores (near ties may swap places)
    for stem in info["stems"]:
        for key in ("om_b1", "om_b2"):
            got = read_image_outputs(exported_run / "infer" / key, stem, info["output_names"], info["outputs"])
            ref = read_image_outputs(exported_run / "infer" / "onnxruntime_b1", stem, info["output_names"],
                                     info["outputs"])
            np.testing.assert_array_equal(got["scores"], got["scores"].astype(np.float16))
            for label in np.unique(ref["labels"]):  # scores near the cuts may come and go
                want = np.sort(ref["scores"][(ref["labels"] == label) & (ref["scores"] > 0.1)])[::-1]
                np.testing.assert_allclose(np.sort(got["scores"][got["labels"] == label])[::-1][:len(want)], want,
                                           atol=2e-3)

    metrics = run_evaluate(ctx)
    ap = {k: v["metrics"]["segm"]["AP"] for k, v in metrics.items()}
    assert ap["om_b1"] == pytest.approx(ap["onnxruntime_b1"], abs=0.01) and ap["om_b1"] > 0.3
    assert ap["om_b2"] == pytest.approx(ap["onnxruntime_b1"], abs=0.01)

    ctx.settings.backends = ["om"]
    bench = run_benchmark(ctx)
    assert [(r["backend"], r["batch_size"]) for r in bench["rows"]] == [("om", 1), ("om", 2)]
    assert bench["rows"][1]["mean_ms"] == 2.0 and bench["rows"][1]["p99_ms"] == 2.4
    assert bench["rows"][1]["throughput"] == 1000.0 and bench["rows"][1]["AP"] == pytest.approx(ap["om_b2"])
    perf = json.loads((log / "ais_bench.jsonl").read_text().splitlines()[-1])
    assert "--loop" in perf and "--input" not in perf
    out = perf[perf.index("--output") + 1]
    assert (Path(out) / "perf_summary.json").is_file()  # ais_bench's <output>/<dirname>_summary.json


def test_parse_summary_from_file_then_log_and_output_listing(tmp_path):
    # summary.py Summary.report: <output>/<output_dirname>_summary.json, keys as written there
    (tmp_path / "perf_summary.json").write_text(json.dumps({
        "NPU_compute_time": {"min": 3.0, "max": 4.1, "mean": 3.6, "median": 3.5, "percentile(99%)": 4.0, "count": 10},
        "throughput": 1111.1}))
    assert om.parse_summary(tmp_path, "perf") == {"mean_ms": 3.6, "p50_ms": 3.5, "p99_ms": 4.0, "throughput": 1111.1}
    assert om.summary_path(tmp_path, "perf") == tmp_path / "perf_summary.json"
    # older ais_bench / ais_infer summary.py: os.path.join(output_prefix, "sumary.json"), in the output folder
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sumary.json").write_text(json.dumps({
        "NPU_compute_time": {"mean": 5.0, "median": 4.9, "percentile(99%)": 6.0}, "throughput": 200.0}))
    assert om.parse_summary(tmp_path, "old") == {"mean_ms": 5.0, "p50_ms": 4.9, "p99_ms": 6.0, "throughput": 200.0}
    # the log lines of the same function when there is no file
    stdout = ("[INFO] NPU_compute_time (ms): min = 3.1, max = 4.0, mean = 3.5, median = 3.4, percentile(99%) = 3.9\n"
              "[INFO] throughput 1000*batchsize.mean(4)/NPU_compute_time.mean(3.5): 1142.86\n")
    assert om.parse_summary(tmp_path, "other", stdout) == {"mean_ms": 3.5, "p50_ms": 3.4, "p99_ms": 3.9,
                                                          "throughput": 1142.86}
    # io_oprations.py save_tensors_to_file: <input basename up to its first dot>_<i>.bin
    assert om.output_name("bins/000000000139.bin") == "000000000139" and om.output_name("a.b.bin") == "a"
    for name in ("a_0.bin", "a_1.bin", "a_2.bin", "b_x_0.bin", "b_x_1.bin", "b_x_2.bin", "perf_summary.json"):
        (tmp_path / name).write_bytes(b"")
    assert om.list_output_basenames(tmp_path, 3) == ["a", "b_x"]


def test_atc_failure_reports_its_error_code_line(make_ctx, exported_run, monkeypatch, tmp_path):
    """ATC prints its banner, then "E10031: ..." and trace lines on stdout: the E-code line is the reason."""
    log = put_tools_on_path(tmp_path, monkeypatch, atc=ATC)
    # a dynamic batch for a static-batch ONNX (no -1 in --input_shape): ATC refuses it. The flag is added to the
    # command by hand: in deploy.compile.atc_args it is refused before ATC runs (deploy.compile.dynamic_batch owns it)
    cmd = [*atc_command(exported_onnx(exported_run, "1"), tmp_path / "m", "input", 1, (128, 160)),
           "--dynamic_batch_size=1,2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 255 and atc_error(proc.stdout, proc.stderr) == (
        "E10031: At least one batch n must be equal to -1 when set --dynamic_batch_size.")
    (log / "atc.jsonl").unlink()
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.atc_args=['--dynamic_batch_size=1,2']",
                   run_dir=exported_run)
    with pytest.raises(DeployError, match=r"^deploy.compile.atc_args sets '--dynamic_batch_size=1,2' "
                                          r"\(--dynamic_batch_size\), which the compile stage sets itself "
                                          r"\(deploy.compile.dynamic_batch\): drop it, or set "
                                          r"deploy.compile.dynamic_batch$"):
        run_compile(ctx)
    assert not (log / "atc.jsonl").exists()


@pytest.mark.parametrize("arg, owned", [
    ("--model=other.onnx", "model"), ("--output=elsewhere/m", "output"),
    ("-input_shape=input:1,3,800,1216", "input_shape"), ("--soc-version=Ascend910B", "soc_version"),
    ("--soc=Ascend910B", "soc_version"), ("--framework=5", "framework"),
    ("--customize_dtypes=keep.cfg", "customize_dtypes")])
def test_atc_args_that_set_a_flag_the_compile_stage_owns_are_refused(arg, owned):
    """ATC takes the last value of a flag given twice (cmd_flag_info.cc SetFlagValue) and reads -name, --name-x and
    unique abbreviations as the flag (FormatArgv, getopt_long): another --model or --output would compile another
    file or put the .om where the stage does not look; refused in one line before ATC runs."""
    with pytest.raises(DeployError, match=rf"sets {re.escape(repr(arg))} \(--{owned}\), which the compile stage"):
        compile_310p.check_atc_args([arg])
    compile_310p.check_atc_args(["--mode=0", "--op_select_implmode=high_precision", "--log=info",
                                 "--precision_mode=force_fp16", "--out_nodes=a:0", "--input_fp16_nodes=input"])


def test_atc_precision_options_with_the_atc_standin(make_ctx, exported_run, monkeypatch, tmp_path, caplog):
    """--precision_mode_v2 reaches ATC and labels the om fp32 for origin; both options stop before ATC runs
    (ATC refuses them: E10056); an unknown value is ATC's E10001 line, after a WARNING (CANN ATC Instructions,
    --precision_mode_v2; hicann/ge compiler/api/aclgrph/option_utils.cc, and api/atc/cmd_flag_info.cc, whose flag
    parser refuses the value first)."""
    log = put_tools_on_path(tmp_path, monkeypatch, atc=ATC)
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.precision_mode_v2=origin", run_dir=exported_run)
    result = run_compile(ctx)
    calls = [json.loads(line)["argv"] for line in (log / "atc.jsonl").read_text().splitlines()]
    assert [c[-1] for c in calls] == ["--precision_mode_v2=origin"] * 2 and set(result["om"]) == {"1", "2"}
    assert "--precision_mode_v2=origin" in (exported_run / "compile_310p.sh").read_text()
    assert OmBackend(ctx).precision == "fp32"

    (log / "atc.jsonl").unlink()
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.precision_mode=force_fp16",
                   "deploy.compile.atc_args=['--precision_mode_v2=origin']", run_dir=exported_run)
    with pytest.raises(DeployError, match=r"deploy.compile.precision_mode=force_fp16 and --precision_mode_v2=origin "
                                          r"in deploy.compile.atc_args: ATC refuses --precision_mode together"):
        run_compile(ctx)
    assert not (log / "atc.jsonl").exists()

    compile_310p._warn_unknown_precision.cache_clear()
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.precision_mode_v2=fp32", run_dir=exported_run)
    with caplog.at_level("WARNING"):
        result = run_compile(ctx)
    assert result["om"] == {} and result["messages"][0].startswith(
        "atc (batch 1) failed (exit 255): E10001: Value fp32 for parameter --precision_mode_v2 is invalid. Reason: "
        "The value is not within the range of values. The valid range is [cube_fp16in_fp32out] [cube_hif8] [fp16] "
        "[mixed_bfloat16] [mixed_float16] [mixed_hif8] [origin] .")
    assert sum("deploy.compile.precision_mode_v2=fp32 is not a value" in r.getMessage() for r in caplog.records) == 1
    assert OmBackend(ctx).precision == "fp16"


def _ais_bench_alone(exported_run, monkeypatch, tmp_path) -> tuple[list[str], Path, Path]:
    """(the ais_bench stand-in's command, a batch-1 .om of the exported model, an empty input folder)."""
    bin_dir, log, inputs = tmp_path / "bin", tmp_path / "log", tmp_path / "inputs"
    for folder in (bin_dir, log, inputs):
        folder.mkdir()
    install_tool(bin_dir, "ais_bench", AIS_BENCH)
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return [str(bin_dir / "ais_bench")], write_om(tmp_path / "model_b1.om", exported_onnx(exported_run, "1")), inputs


def test_ais_bench_failure_reports_its_error_line(exported_run, monkeypatch, tmp_path):
    """ais_bench logs "[ERROR] ..." on stdout and raises a bare RuntimeError: the [ERROR] line is the reason."""
    launcher, model, inputs = _ais_bench_alone(exported_run, monkeypatch, tmp_path)
    (inputs / "a.bin").write_bytes(bytes(100))  # not a whole input of 1x3x128x160 float32
    cmd = om.ais_bench_command(launcher, model, tmp_path / "out", "b1", inputs, batch_size=1)
    with pytest.raises(DeployError) as err:
        om.run_ais_bench(cmd)
    assert str(err.value) == "ais_bench failed (exit 1): arg0 tensorsize: 245760 filesize: 100 not match"
    proc = subprocess.run(cmd, capture_output=True, text=True)  # what the message was taken from
    assert proc.stderr.rstrip().splitlines()[-1] == "RuntimeError" and "[ERROR] arg0" in proc.stdout
    with pytest.raises(DeployError, match=r"^ais_bench failed \(exit 1\): parameter --output_dirname cann't be used"):
        om.run_ais_bench([*launcher, "--model", str(model), "--output_dirname", "b1"])
    bad_device = om.ais_bench_command(launcher, model, tmp_path / "out", "b1", inputs, device_id=300)
    with pytest.raises(DeployError, match=r"\(exit 2\): .*argument --device/-d: device:300 is invalid"):
        om.run_ais_bench(bad_device)


def test_om_benchmark_passes_the_warmup_count(make_ctx, exported_run, monkeypatch, tmp_path):
    """deploy.benchmark.warmup reaches ais_bench as --warmup_count (its own default is 1, __main__.py get_args)."""
    log = put_tools_on_path(tmp_path, monkeypatch, ais_bench=AIS_BENCH)
    model = write_om(tmp_path / "model_b1.om", exported_onnx(exported_run, "1"))
    ctx = make_ctx("deploy.backends=[om]", "deploy.batch_sizes=[1]", "deploy.om.launcher=ais_bench",
                   "deploy.benchmark.warmup=3", "deploy.benchmark.iters=4", run_dir=exported_run)
    write_json(ctx.path("compile", "compile.json"), {"om": {"1": str(model)}, "torch_aie": {}, "messages": []})
    bench = run_benchmark(ctx)
    assert [(r["backend"], r["batch_size"], r["mean_ms"]) for r in bench["rows"]] == [("om", 1, 2.0)]
    perf = json.loads((log / "ais_bench.jsonl").read_text().splitlines()[-1])
    assert perf[perf.index("--loop") + 1] == "4" and perf[perf.index("--warmup_count") + 1] == "3"


def test_single_file_inputs_use_the_folder_only_when_it_holds_exactly_them(tmp_path, monkeypatch):
    """ais_bench infers every *.bin / *.npy of an --input folder (utils.py get_fileslist_from_dir)."""
    folder = tmp_path / "bins"
    folder.mkdir()
    bins = [folder / f"{i:03d}.bin" for i in range(3)]
    for path in bins:
        path.write_bytes(bytes(8))
    (folder / "notes.txt").write_text("")  # not an input for ais_bench
    assert om.single_file_inputs(bins, tmp_path / "links") == (str(folder), None)
    (folder / "old.bin").write_bytes(bytes(8))  # left by an earlier, larger run
    assert om.single_file_inputs(bins, tmp_path / "links") == (",".join(map(str, bins)), None)
    monkeypatch.setattr(om, "MAX_ARG_CHARS", 10)  # a list too long for one argument: hard links
    listed, links = om.single_file_inputs(bins, tmp_path / "links")
    assert listed == str(tmp_path / "links") and links == tmp_path / "links"
    assert sorted(p.name for p in links.iterdir()) == [p.name for p in bins]
    assert all(not p.is_symlink() and p.stat().st_nlink == 2 for p in links.iterdir())


def test_om_batch1_ignores_stale_files_in_the_input_folder(make_ctx, exported_run, monkeypatch, tmp_path):
    """A .bin left in preprocess/bins by an earlier run is neither inferred nor written out."""
    from solo_npu.deploy.export import load_manifest
    from solo_npu.deploy.preprocess import load_index

    log = put_tools_on_path(tmp_path, monkeypatch, ais_bench=AIS_BENCH)
    model = write_om(tmp_path / "model_b1.om", exported_onnx(exported_run, "1"))
    ctx = make_ctx("deploy.backends=[om]", "deploy.om.launcher=ais_bench", run_dir=exported_run)
    write_json(ctx.path("compile", "compile.json"), {"om": {"1": str(model)}, "torch_aie": {}, "messages": []})
    records = load_index(ctx)["images"]
    bins = exported_run / "preprocess" / "bins"
    stale = bins / "zz_stale.bin"
    stale.write_bytes((bins / Path(records[0]["bin"]).name).read_bytes())
    try:
        out = tmp_path / "infer" / "om_b1"
        OmBackend(ctx).run_records(records, 1, out, load_manifest(ctx))
    finally:
        stale.unlink()
    assert sorted(p.name for p in out.glob("*_0.bin")) == sorted(f"{r['stem']}_0.bin" for r in records)
    run = json.loads((log / "ais_bench.jsonl").read_text().splitlines()[-1])
    assert run[run.index("--input") + 1] == ",".join(str(exported_run / r["bin"]) for r in records)


def test_dynamic_om_runs_at_its_gears_only(make_ctx, exported_run, monkeypatch, tmp_path):
    """ais_bench runs a .om built with --dynamic_batch_size at its gears only (ModelProcess::CheckDynamicBatchSize):
    compile records the gears, and a batch size that has neither a .om of its own nor a gear is skipped, naming them."""
    from solo_npu.deploy.export import load_manifest
    from solo_npu.deploy.preprocess import load_index

    run_dir = tmp_path / "run"
    for stage in ("export", "preprocess"):
        shutil.copytree(exported_run / stage, run_dir / stage)
    log = put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH)
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.dynamic_batch=[1,2]", "deploy.om.launcher=ais_bench",
                   run_dir=run_dir)
    compiled = run_compile(ctx)
    dynamic = str(run_dir / compiled["om"]["dynamic"])
    assert compiled["om_gears"] == [1, 2] and json.loads(Path(dynamic).read_text())["gears"] == [1, 2]
    # only the dynamic .om left (as when the static builds failed), and a batch size that is not one of its gears
    write_json(ctx.path("compile", "compile.json"), {"om": {"dynamic": dynamic}, "om_gears": [1, 2]})
    ctx = make_ctx("deploy.backends=[om]", "deploy.batch_sizes=[1,2,3]", "deploy.om.launcher=ais_bench",
                   run_dir=run_dir)
    backend = OmBackend(ctx)
    assert backend.unavailable(2) is None
    assert backend.unavailable(3) == "batch 3 is not one of the .om's gears [1, 2] and has no .om of its own"

    records = load_index(ctx)["images"][:2]
    out = run_dir / "infer" / "om_b2"
    backend.run_records(records, 2, out, load_manifest(ctx))
    run = json.loads((log / "ais_bench.jsonl").read_text().splitlines()[-1])
    assert run[:2] == ["--model", dynamic] and run[run.index("--dymBatch") + 1] == "2"
    assert sorted(p.name for p in out.glob("*_0.bin")) == sorted(f"{r['stem']}_0.bin" for r in records)
    # ais_bench itself refuses a batch size that is not a gear, with the gears in its last [ERROR] line
    cmd = om.ais_bench_command(["ais_bench"], dynamic, tmp_path / "out", "b3", extra_args=["--dymBatch", "3"])
    with pytest.raises(DeployError, match=r"^ais_bench failed \(exit 1\): model has dynamic batch size:"
                                          r"\{\[1\]\[2\]\}, please set correct dynamic batch size$"):
        om.run_ais_bench(cmd)
    monkeypatch.setenv("STANDIN_AIS_BENCH", "newer")  # newer releases also refuse a dynamic .om without --dymBatch
    with pytest.raises(DeployError, match=r"\(exit 1\): RuntimeError: dynamic batch om model detected, but dymbatch"):
        om.run_ais_bench(om.ais_bench_command(["ais_bench"], dynamic, tmp_path / "out", "b0"))


def test_om_inputs_and_folders_pass_newer_ais_bench_checks_under_umask_002(make_ctx, exported_run, monkeypatch,
                                                                           tmp_path):
    """Newer ais_bench refuses a group-writable .om, input file or input folder, and an existing output folder open
    to others (path_security_check.py): with umask 002 (Ubuntu's default for users) everything it is handed is
    narrowed to 0o640 / 0o750, and the output folder of a run is left for it to make."""
    from solo_npu.deploy.export import load_manifest
    from solo_npu.deploy.preprocess import load_index

    run_dir = tmp_path / "run"
    put_tools_on_path(tmp_path, monkeypatch, ais_bench=AIS_BENCH)
    monkeypatch.setenv("STANDIN_AIS_BENCH", "newer")
    ctx = make_ctx("deploy.backends=[om]", "deploy.om.launcher=ais_bench", run_dir=run_dir)
    previous = os.umask(0o002)
    try:
        shutil.copytree(exported_run / "export", run_dir / "export")
        run_preprocess(ctx)
        (run_dir / "compile").mkdir()
        models = {k: str(write_om(run_dir / "compile" / f"model_b{k}.om", exported_onnx(exported_run, k)))
                  for k in ("1", "2")}
        write_json(ctx.path("compile", "compile.json"), {"om": models, "torch_aie": {}, "messages": []})
        (run_dir / "infer" / "om_b1").mkdir(parents=True)  # left by an earlier run
        records, manifest = load_index(ctx)["images"], load_manifest(ctx)
        bins = [run_dir / r["bin"] for r in records]
        assert all(p.stat().st_mode & 0o020 for p in [*bins, *map(Path, models.values())])  # as umask 002 made them
        backend = OmBackend(ctx)
        for bs in (1, 2):
            backend.run_records(records, bs, run_dir / "infer" / f"om_b{bs}", manifest)
        assert backend.stats(1, 2)["mean_ms"] == 2.0
    finally:
        os.umask(previous)
    handed = [*bins, *map(Path, models.values()), run_dir / "preprocess" / "bins", run_dir / "infer" / "om_b1",
              run_dir / "infer", run_dir / "benchmark" / "om_b1"]
    assert {p.name: oct(p.stat().st_mode & 0o027) for p in handed if p.stat().st_mode & 0o027} == {}
    assert sorted(p.name for p in (run_dir / "infer" / "om_b2").glob("*_0.bin")) == sorted(
        f"{r['stem']}_0.bin" for r in records)


def test_customize_dtypes_file_travels_with_the_run_directory(make_ctx, exported_run, monkeypatch, tmp_path):
    """ATC runs in the run directory and reads --customize_dtypes there (the ModelZoo SOLOV2 guide passes
    customize_dtypes.cfg from its own folder): a file named relative to the launch directory is copied into
    compile/ and named from the run directory; a missing one is one line before ATC runs."""
    log = put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH)
    launch = tmp_path / "launch"
    launch.mkdir()
    (launch / "keep_fp32.cfg").write_text("OpType::Resize:InputDtype:float32,OutputDtype:float32\n")
    monkeypatch.chdir(launch)
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.customize_dtypes=keep_fp32.cfg",
                   "deploy.om.launcher=ais_bench", run_dir=exported_run)
    compiled = run_compile(ctx)
    assert not compiled["messages"] and set(compiled["om"]) == {"1", "2"}
    call = json.loads((log / "atc.jsonl").read_text().splitlines()[-1])
    assert "--customize_dtypes=compile/keep_fp32.cfg" in call["argv"]
    assert (exported_run / "compile" / "keep_fp32.cfg").read_text().startswith("OpType::Resize")
    ctx = make_ctx("deploy.backends=[om]", "deploy.compile.customize_dtypes=missing.cfg", run_dir=exported_run)
    with pytest.raises(DeployError, match=r"deploy.compile.customize_dtypes=missing.cfg: no such file"):
        run_compile(ctx)


def test_atc_standin_refuses_a_missing_model_file(tmp_path):
    """As ATC does (ge/offline/main.cc: CheckInputPathValid(FLAGS_model, "--model")), before any conversion."""
    env = {**os.environ, "STANDIN_LOG": str(tmp_path)}
    (tmp_path / "bin").mkdir()
    script = install_tool(tmp_path / "bin", "atc", ATC)
    proc = subprocess.run([str(script), "--framework=5", "--model=/nonexistent.onnx", "--output=out",
                           "--input_shape=input:1,3,64,64", "--soc_version=Ascend310P3"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 255 and "model file /nonexistent.onnx not found!!" in proc.stdout
    assert not (tmp_path / "out.om").exists()


def test_a_failing_backend_is_reported_and_the_others_go_on(make_ctx, exported_run, monkeypatch, tmp_path):
    """ais_bench refusing its device (exit 2, its own argparse check) fails the om rows only: onnxruntime is
    inferred, scored, timed and reported, the report lists the failure, and the run ends with an error naming
    it. Before, the first failing backend ended the run and no later stage ran."""
    from solo_npu.deploy.pipeline import run_pipeline

    log = put_tools_on_path(tmp_path, monkeypatch, ais_bench=AIS_BENCH)
    run_dir = tmp_path / "run"
    shutil.copytree(exported_run, run_dir)  # its manifest names its files relative to it
    (run_dir / "compile").mkdir(exist_ok=True)
    model = write_om(run_dir / "compile" / "model_b1.om", exported_onnx(run_dir, "1"))
    ctx = make_ctx("deploy.backends=[om,onnxruntime]", "deploy.batch_sizes=[1]", "deploy.om.launcher=ais_bench",
                   "deploy.device_id=300", "deploy.benchmark.warmup=0", "deploy.benchmark.iters=1",
                   "deploy.benchmark.e2e_images=0", "stages=[infer,evaluate,benchmark,report]", run_dir=run_dir)
    write_json(ctx.path("compile", "compile.json"), {"om": {"1": str(model)}, "torch_aie": {}, "messages": []})
    with pytest.raises(DeployError, match=r"^2 backend run\(s\) failed \(om_b1 infer: ais_bench failed \(exit 2\): "
                                          r".*device:300 is invalid.*; om_b1 benchmark: .*device:300 is invalid"):
        run_pipeline(ctx.cfg, ctx=ctx)
    assert (log / "ais_bench.jsonl").is_file()  # the tool ran and refused
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    assert "device:300 is invalid" in summary["om_b1"]["failed"] and summary["onnxruntime_b1"]["images"] == 8
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert "om_b1" not in metrics and metrics["onnxruntime_b1"]["metrics"]["segm"]["AP"] > 0.3
    rows = json.loads((run_dir / "benchmark" / "benchmark.json").read_text())["rows"]
    assert [(r["backend"], "failed" in r) for r in rows] == [("om", True), ("onnxruntime", False)]
    report = (run_dir / "report.md").read_text()
    assert "Failed (not in the table):\n- om_b1 infer: ais_bench failed (exit 2)" in report
    assert "| onnxruntime |" in report and "| om |" not in report


def test_ais_bench_input_paths_with_commas_are_refused_and_refused_characters_named(tmp_path):
    """Every ais_bench splits --input at commas (get_args: args.input.split(',')); newer ones refuse any path
    character outside [_A-Za-z0-9/.-] (path_security_check.py PATH_WHITE_LIST_REGEX), on the absolute path."""
    with pytest.raises(DeployError, match=r"splits --input at commas and .*a,b\.bin holds one"):
        om.check_input_paths([tmp_path / "ok.bin", tmp_path / "a,b.bin"])
    om.check_input_paths([tmp_path / "ok.bin"])
    cmd = ["python", "-m", "ais_bench", "--model", "/x/m.om", "--input", "/in/a.bin,/in b/c.bin",
           "--output", "/out", "--output_dirname", "run:1"]
    assert om._refused_paths(cmd) == ["/in b/c.bin"]  # --output_dirname is a name, checked as part of no path here
    fail = tmp_path / "fail.sh"
    fail.write_text("#!/bin/sh\necho '[ERROR] om path:/x/m.om is illegal. Please check.'\nexit 2\n")
    fail.chmod(0o755)
    with pytest.raises(DeployError, match=r"is illegal\. Please check\. \(newer ais_bench refuses paths with "
                                          r"characters other than .*: /in b/c\.bin; use a run_dir without them\)"):
        om.run_ais_bench([str(fail), *cmd[3:]])


@pytest.mark.parametrize("extra", [["--outfmt", "NPY"], ["--outf=NPY"], ["-o", "/tmp/x"], ["--output_dirname=x"],
                                   ["--loop", "9"]])
def test_extra_args_that_set_a_flag_the_om_backend_owns_are_refused(extra):
    """They come last, so ais_bench's argparse takes theirs: --outfmt NPY (or its prefix --outf) made ais_bench write
    <stem>_0.npy, and the om backend, which reads <stem>_0.bin, found no outputs."""
    with pytest.raises(DeployError, match=r"^deploy\.om\.extra_args sets '.+' \(--\w+\), which the om backend sets"):
        om.ais_bench_command(["ais_bench"], "m.om", "out", "b1", "in", extra_args=extra)
    assert om.ais_bench_command(["ais_bench"], "m.om", "out", "b1", extra_args=["--display_all_summary", "1"])


def test_ais_bench_standin_writes_the_format_asked_for_where_the_tool_writes_it(exported_run, tmp_path, monkeypatch):
    """Ascend/tools ais_bench: outputs are <stem>_<i>.<outfmt> (io_oprations.py save_tensors_to_file; np.save for
    NPY), under <output>/<output_dirname>, or under a folder named by the time without --output_dirname (main)."""
    launcher, model, inputs = _ais_bench_alone(exported_run, monkeypatch, tmp_path)
    np.zeros((1, 3, 128, 160), np.float32).tofile(inputs / "a.bin")
    run = [*launcher, "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o")]
    subprocess.run([*run, "--output_dirname", "npy", "--outfmt", "NPY"], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "o" / "npy").iterdir()) == ["a_0.npy", "a_1.npy", "a_2.npy"]
    subprocess.run(run, check=True, capture_output=True)
    (stamped,) = [p for p in (tmp_path / "o").iterdir() if p.is_dir() and p.name != "npy"]
    assert len(stamped.name) == len("2026_12_05-01_02_03") and sorted(p.name for p in stamped.iterdir()) == [
        "a_0.bin", "a_1.bin", "a_2.bin"]
    scores = np.load(tmp_path / "o" / "npy" / "a_2.npy")
    assert scores.shape[0] == 1 and np.array_equal(scores.reshape(-1), np.fromfile(stamped / "a_2.bin", np.float32))
