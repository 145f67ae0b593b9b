"""om at batch 2 with the default (bounded) infer settings: no batched copies or raw outputs left behind and
the AP unchanged; npu-smi's chip memory as the om row's peak memory; the 310P preset's ATC precision."""

from __future__ import annotations

import json
import shlex

import pytest
from deploy_standins import AIS_BENCH, ATC, install_tool, put_tools_on_path
from deploy_support import CANVAS, compose_deploy_cfg

from solo_npu.deploy.benchmark import NpuSmiSampler, npu_smi_memory_mb, run_benchmark
from solo_npu.deploy.compile_310p import atc_command, run_compile
from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import run_infer
from solo_npu.deploy.preprocess import run_preprocess

# `npu-smi info` on a 310P3 host, as the Ascend ModelZoo SOLOV2 torch_aie inference guide prints it (step
# "执行命令查看芯片名称"): per NPU a name row and a "Chip Device | Bus-Id | AICore(%) Memory-Usage(MB)" row.
NPU_SMI_TABLE = """\
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
| 1       310P3     | OK              | 15.4         43                0    / 0              |
| 0       1         | 0000:89:00.0    | 0            1070 / 21534                            |
+===================+=================+======================================================+
"""

# A stand-in npu-smi: `npu-smi info` prints the table above with device 1's memory raised by 100 MB per call
# (a model being loaded), counted in $STANDIN_LOG/npu_smi_calls.
NPU_SMI = f'''
import os, sys
from pathlib import Path
if sys.argv[1:] != ["info"]:
    sys.exit("npu-smi stand-in: only `npu-smi info`")
counter = Path(os.environ["STANDIN_LOG"]) / "npu_smi_calls"
calls = int(counter.read_text()) if counter.is_file() else 0
counter.write_text(str(calls + 1))
print({NPU_SMI_TABLE!r}.replace("1070 / 21534", "{{}} / 21534".format(1070 + 100 * calls)))
'''


def test_npu_smi_memory_of_each_device():
    assert npu_smi_memory_mb(NPU_SMI_TABLE, 0) == (1074.0, 21534.0)
    assert npu_smi_memory_mb(NPU_SMI_TABLE, 1) == (1070.0, 21534.0)
    assert npu_smi_memory_mb(NPU_SMI_TABLE, 2) is None
    # chips with HBM add a pair after the DDR one: the last pair is the device memory
    hbm = "| 0       0         | 0000:C1:00.0    | 0            0    / 0          3380 / 65536         |"
    assert npu_smi_memory_mb(hbm, 0) == (3380.0, 65536.0)


def test_npu_smi_sampler_keeps_the_highest_reading(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    install_tool(bin_dir, "npu-smi", NPU_SMI)
    monkeypatch.setenv("STANDIN_LOG", str(tmp_path))
    with NpuSmiSampler(1, str(bin_dir / "npu-smi"), interval_s=60) as sampler:
        pass  # one reading on entry, one on exit
    assert int((tmp_path / "npu_smi_calls").read_text()) == 2
    assert sampler.peak_mb == 1170.0  # the second reading: 1070 + 100


@pytest.fixture
def bounded_ctx(synthetic_coco, fitted_tiny, tmp_path, monkeypatch):
    put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH, **{"npu-smi": NPU_SMI})
    cfg = compose_deploy_cfg([
        "model=solov2_tiny", "data=synthetic", f"data.root={synthetic_coco}", "data.generate=false",
        f"deploy.input_shape=[{CANVAS[0]},{CANVAS[1]}]", "deploy.batch_sizes=[1,2]", "deploy.infer.batch_sizes=[2]",
        "deploy.backends=[onnxruntime,om]", "deploy.om.launcher=ais_bench", "deploy.device_id=1",
        "deploy.benchmark.warmup=0", "deploy.benchmark.iters=1", "deploy.benchmark.e2e_images=1",
        "deploy.verify.num_images=1", "deploy.onnxruntime.intra_op_num_threads=1", f"run_dir={tmp_path / 'run'}"])
    ctx = DeployContext(cfg, tmp_path / "run", "solov2_tiny")
    ctx.set_model(fitted_tiny)
    return ctx


def test_om_at_batch_two_leaves_no_copies(bounded_ctx):
    ctx = bounded_ctx
    for stage in (run_export, run_compile, run_preprocess):
        stage(ctx)
    summary = run_infer(ctx)
    assert set(summary) == {"onnxruntime_b2", "om_b2"}
    infer_files = sorted(p.relative_to(ctx.path("infer")).as_posix() for p in ctx.path("infer").rglob("*")
                         if p.is_file())
    # only the descriptions and ais_bench's timing summary (<output>/<output_dirname>_summary.json) stay: the
    # batched input copy, ais_bench's batched outputs and the per-image raw outputs are gone
    assert infer_files == ["om_b2/outputs.json", "om_b2_raw_summary.json", "onnxruntime_b2/outputs.json",
                           "summary.json"]
    metrics = run_evaluate(ctx)
    # ATC's default precision (force_fp16): the stand-in's .om computes in float16 storage, near the float32 AP
    assert metrics["om_b2"]["metrics"]["segm"]["AP"] == pytest.approx(
        metrics["onnxruntime_b2"]["metrics"]["segm"]["AP"], abs=0.01)
    assert metrics["om_b2"]["metrics"]["segm"]["AP"] > 0.3
    assert set(metrics["om_b2"]["metrics"]) == {"segm", "bbox"}

    bench = run_benchmark(ctx)
    rows = {(r["backend"], r["batch_size"]): r for r in bench["rows"]}
    om_row = rows["om", 1]
    assert om_row["timing"] == "device compute from ais_bench" and om_row["memory"] == "npu-smi chip used"
    assert om_row["peak_mb"] is not None and om_row["peak_mb"] >= 1170.0  # device 1 of the stand-in table
    assert om_row["AP"] is None and rows["om", 2]["AP_by_type"]["segm"] == pytest.approx(
        metrics["om_b2"]["metrics"]["segm"]["AP"])
    assert rows["onnxruntime", 2]["memory"] == "process RSS" and rows["onnxruntime", 2]["timing"] == "model only"
    assert not ctx.path("benchmark", "om_b1", "perf").exists()  # ais_bench's outputs of the zero input


def test_310p_preset_keeps_atc_default_precision():
    cfg = compose_deploy_cfg(["model=solov2", "deploy=310p"])
    assert cfg.deploy.compile.precision_mode is None
    assert "precision_mode" not in cfg.deploy.onnxruntime.provider_options.npu
    cmd = atc_command("export/model_b1.onnx", "compile/model_b1", "input", 1, (800, 1216), "Ascend310P3",
                      cfg.deploy.compile.precision_mode)
    assert not any(a.startswith("--precision_mode") for a in cmd), shlex.join(cmd)
    # the guides' alternative stays one override away
    cfg = compose_deploy_cfg(["model=solov2", "deploy=310p", "deploy.compile.precision_mode=allow_fp32_to_fp16"])
    assert "--precision_mode=allow_fp32_to_fp16" in atc_command(
        "m.onnx", "m", "input", 1, (800, 1216), "Ascend310P3", cfg.deploy.compile.precision_mode)
    assert json.loads(json.dumps(list(cfg.deploy.backends)))[-2:] == ["om", "torch_aie"]
