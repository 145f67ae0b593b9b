"""ATC's precision options for the om backend: --precision_mode and --precision_mode_v2 on the command line, the
precision label (verify tolerances, report column) for each documented value, and the refusal of both together.

Sources: CANN "ATC Instructions" (hiascend.com, atctool), --precision_mode and --precision_mode_v2 ("该参数不能与
--precision_mode参数同时使用"); hicann/ge api/atc/atc_flags.cc (the values), compiler/api/aclgrph/option_utils.cc
(CheckPrecisionModeV2ParamValid, CheckPrecisionModeV2Conflict: E10056).
"""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
from deploy_standins import AIS_BENCH, ATC, install_tool, put_tools_on_path

from solo_npu.deploy import compile_310p
from solo_npu.deploy.backends import OmBackend
from solo_npu.deploy.compile_310p import atc_command, atc_error, atc_jobs, run_compile
from solo_npu.deploy.context import DeployContext, DeployError
from solo_npu.deploy.verify import tolerances

# The values each option takes (ATC Instructions; hicann/ge atc_flags.cc help strings), with the label each gets:
# only the two that keep the original graph's precision ("保持原图精度") are fp32.
PRECISION_MODE = {"force_fp16": "fp16", "force_fp32": "fp16", "cube_fp16in_fp32out": "fp16",
                  "allow_mix_precision": "fp16", "allow_fp32_to_fp16": "fp16", "must_keep_origin_dtype": "fp32",
                  "allow_mix_precision_fp16": "fp16", "allow_mix_precision_bf16": "fp16", "allow_fp32_to_bf16": "fp16"}
PRECISION_MODE_V2 = {"fp16": "fp16", "origin": "fp32", "cube_fp16in_fp32out": "fp16", "mixed_float16": "fp16",
                     "mixed_bfloat16": "fp16", "cube_hif8": "fp16", "mixed_hif8": "fp16"}
BOTH = "ATC refuses --precision_mode together with --precision_mode_v2 \\(E10056\\): set only one"


@pytest.fixture(scope="module")
def exported_b1(make_ctx, tmp_path_factory):
    """A run directory with the tiny model exported at batch 1 and the verify images."""
    from solo_npu.deploy.export import run_export

    run_dir = tmp_path_factory.mktemp("om_precision")
    run_export(make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", run_dir=run_dir))
    return run_dir


@pytest.fixture
def ctx_with(deploy_cfg, tmp_path):
    """``ctx_with(*overrides)``: a DeployContext of the composed deploy config (no model is built)."""
    return lambda *overrides: DeployContext(deploy_cfg(*overrides), tmp_path / "run", model_name="solov2_tiny")


def test_precision_mode_v2_reaches_the_atc_command(ctx_with, tmp_path):
    cmd = atc_command("m.onnx", "m", "input", 1, (32, 32), precision_mode_v2="origin")
    assert cmd[-1] == "--precision_mode_v2=origin" and not any(a.startswith("--precision_mode=") for a in cmd)
    # from the config, as the compile stage builds it (and writes it to compile_310p.sh)
    ctx = ctx_with("deploy.compile.precision_mode_v2=mixed_float16", "deploy.compile.atc_args=['--log=info']")
    manifest = {"input_name": "input", "files": {"onnx": {"1": str(tmp_path / "model_b1.onnx")}}}
    [(_, cmd, _)] = [job for job in atc_jobs(ctx, manifest) if job[0] == "1"]
    assert "--precision_mode_v2=mixed_float16" in cmd and not any(a.startswith("--precision_mode=") for a in cmd)
    assert ctx_with().deploy_cfg.compile.precision_mode_v2 is None  # default: not passed, ATC's default applies
    assert "--precision_mode_v2" not in " ".join(atc_command("m.onnx", "m", "input", 1, (32, 32)))


@pytest.mark.parametrize("option, labels", [("precision_mode", PRECISION_MODE),
                                            ("precision_mode_v2", PRECISION_MODE_V2)])
def test_om_precision_label_for_each_documented_value(ctx_with, option, labels):
    """Set by deploy.compile.<option> or by --<option>=... in deploy.compile.atc_args, the label is the same."""
    assert set(labels) == set(compile_310p.ATC_PRECISION_VALUES[option])
    ctx = ctx_with()
    backend, ccfg, verify = OmBackend(ctx), ctx.deploy_cfg.compile, ctx.deploy_cfg.verify
    assert backend.precision == "fp16"  # ATC's default, force_fp16
    for value, label in labels.items():
        dashed = option.replace("_", "-")  # ATC reads --precision-mode as --precision_mode (FormatArgv)
        for setting, args in ((value, []), (None, [f"--{option}={value}"]), (None, [f"--{option}", value]),
                              (None, [f"--{dashed}={value}"]), (None, [f"-{dashed}", value])):
            setattr(ccfg, option, setting)
            ccfg.atc_args = ["--op_select_implmode=high_precision", *args]
            assert (value, backend.precision) == (value, label)
            expected = verify if label == "fp32" else verify.fp16
            assert tolerances(verify, backend.precision)["atol"] == expected.atol


@pytest.mark.parametrize("overrides", [
    ["deploy.compile.precision_mode=force_fp16", "deploy.compile.precision_mode_v2=origin"],
    ["deploy.compile.precision_mode=must_keep_origin_dtype", "deploy.compile.atc_args=['--precision_mode_v2=origin']"],
    ["deploy.compile.precision_mode_v2=origin", "deploy.compile.atc_args=['--precision_mode=force_fp16']"],
    ["deploy.compile.atc_args=['--precision_mode_v2=fp16','--precision_mode=force_fp32']"],
    ["deploy.compile.precision_mode_v2=origin", "deploy.compile.atc_args=['--precision-mode=force_fp16']"],
    ["deploy.compile.precision_mode=force_fp16", "deploy.compile.atc_args=['--precision-mode-v2','origin']"],
])
def test_both_precision_options_are_one_config_error(ctx_with, tmp_path, overrides):
    """ATC refuses --precision_mode with --precision_mode_v2 (E10056): refused before ATC runs, in one line."""
    ctx = ctx_with(*overrides)
    manifest = {"input_name": "input", "files": {"onnx": {"1": str(tmp_path / "model_b1.onnx")}}}
    with pytest.raises(DeployError, match=BOTH) as err:
        atc_jobs(ctx, manifest)
    assert "\n" not in str(err.value)
    with pytest.raises(DeployError, match=BOTH):
        _ = OmBackend(ctx).precision  # verify and the report ask for it


def test_one_precision_option_set_twice_or_without_value():
    with pytest.raises(DeployError, match=r"deploy.compile.precision_mode=force_fp16 and --precision_mode="
                                          r"must_keep_origin_dtype in deploy.compile.atc_args both set ATC's "
                                          r"--precision_mode: set it once"):
        atc_command("m.onnx", "m", "input", 1, (32, 32), precision_mode="force_fp16",
                    extra_args=["--precision_mode=must_keep_origin_dtype"])
    # the same value twice says one thing: it stays
    assert compile_310p.atc_precision("must_keep_origin_dtype", None, ["--precision_mode=must_keep_origin_dtype"]) == (
        "precision_mode", "must_keep_origin_dtype")
    assert compile_310p.atc_precision(None, "origin", ["--precision_mode_v2=origin"]) == ("precision_mode_v2", "origin")
    with pytest.raises(DeployError, match="'--precision_mode_v2' in deploy.compile.atc_args has no value"):
        atc_command("m.onnx", "m", "input", 1, (32, 32), extra_args=["--precision_mode_v2"])
    assert compile_310p.atc_precision("", "", []) is None  # an empty config value is not passed to ATC


@pytest.mark.parametrize("args", [["--precision_mode="], ["--precision_mode_v2="], ["--precision-mode="],
                                  ["--precision_mode", ""], ["-precision-mode-v2", ""]])
def test_empty_precision_value_in_atc_args_is_refused(args):
    """ATC's flag parser refuses an empty --precision_mode / --precision_mode_v2 (the value is not in its range:
    E10001), so it is one line before ATC runs, not an unset option."""
    with pytest.raises(DeployError, match=r"^'-?-precision[-_]mode([-_]v2)?=?' in deploy.compile.atc_args has an "
                                          r"empty value: ATC refuses it \(E10001\); give a value or leave it out$"):
        atc_command("m.onnx", "m", "input", 1, (32, 32), extra_args=args)


@pytest.mark.parametrize("arg, option", [("--precision_mode_=origin", "precision_mode_v2"),
                                         ("--precision_mode_v=origin", "precision_mode_v2"),
                                         ("--precision-mode-v=origin", "precision_mode_v2")])
def test_unique_abbreviation_is_the_v2_option(arg, option):
    """getopt_long takes a unique abbreviation of a long option as the option (glibc manual, getopt.texi), and
    --precision_mode_ / --precision_mode_v abbreviate only --precision_mode_v2."""
    assert compile_310p.atc_precision(None, None, [arg]) == (option, "origin")
    assert compile_310p.om_precision(compile_310p.atc_precision(None, None, [arg])) == "fp32"
    with pytest.raises(DeployError, match=BOTH):
        atc_command("m.onnx", "m", "input", 1, (32, 32), precision_mode="force_fp16", extra_args=[arg])


def test_unknown_value_warns_and_is_half_precision(caplog):
    compile_310p._warn_unknown_precision.cache_clear()
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.compile_310p"):
        setting = compile_310p.atc_precision(None, "fp32", [])
    assert setting == ("precision_mode_v2", "fp32") and compile_310p.om_precision(setting) == "fp16"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "deploy.compile.precision_mode_v2=fp32 is not a value the ATC Instructions list for --precision_mode_v2"]
    assert "ATC refuses a value it does not know (E10001)" in caplog.records[0].getMessage()


def _run_atc_standin(tmp_path, *args):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    for folder in (bin_dir, log):
        folder.mkdir(exist_ok=True)
    atc = install_tool(bin_dir, "atc", ATC)
    (tmp_path / "m.onnx").write_bytes(b"onnx")  # ATC checks that its --model exists before the options
    cmd = atc_command(tmp_path / "m.onnx", tmp_path / "m", "input", 1, (32, 32), atc=str(atc))
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env={"STANDIN_LOG": str(log)})


# ATC's flag parser refuses a value outside a flag's range first, naming the flag and printing the range of
# kStrValueRange in its std::set (sorted) order (hicann/ge api/atc/cmd_flag_info.cc at a0668444,
# CmdFlagInfo::SetFlagValue / PrintValueError / PrintValueRange; GE's E10001 "Value %s for parameter %s is invalid.
# Reason: %s", base/common/error_registry/error_registry.cc).
MODE_RANGE = ("[allow_fp32_to_bf16] [allow_fp32_to_fp16] [allow_mix_precision] [allow_mix_precision_bf16] "
              "[allow_mix_precision_fp16] [cube_fp16in_fp32out] [force_fp16] [force_fp32] [must_keep_origin_dtype] ")
V2_RANGE = "[cube_fp16in_fp32out] [cube_hif8] [fp16] [mixed_bfloat16] [mixed_float16] [mixed_hif8] [origin] "
NOT_IN_RANGE = "is invalid. Reason: The value is not within the range of values. The valid range is"


def test_atc_standin_refuses_what_atc_refuses(tmp_path):
    """Both options is E10056 (option_utils.cc), a value outside a flag's range E10001 from the flag parser
    (cmd_flag_info.cc); exit 255."""
    proc = _run_atc_standin(tmp_path, "--precision_mode=force_fp16", "--precision_mode_v2=origin")
    assert proc.returncode == 255 and not (tmp_path / "m.om").exists()
    assert atc_error(proc.stdout, proc.stderr) == ("E10056: Cannot configure both parameters ge.exec.precision_mode "
                                                   "and ge.exec.precision_mode_v2 simultaneously.")
    proc = _run_atc_standin(tmp_path, "--precision_mode_v2=fp32")
    assert proc.returncode == 255
    assert atc_error(proc.stdout, proc.stderr) == (
        f"E10001: Value fp32 for parameter --precision_mode_v2 {NOT_IN_RANGE} {V2_RANGE}.")
    proc = _run_atc_standin(tmp_path, "--precision_mode=origin")  # a v2 value given to the first option
    assert atc_error(proc.stdout, proc.stderr) == (
        f"E10001: Value origin for parameter --precision_mode {NOT_IN_RANGE} {MODE_RANGE}.")
    for ok in (["--precision_mode_v2=origin"], ["--precision_mode=must_keep_origin_dtype"]):
        proc = _run_atc_standin(tmp_path, *ok)
        assert proc.returncode == 0 and "ATC run success" in proc.stdout, proc.stdout
        assert json.loads((tmp_path / "m.om").read_text())["onnx"] == str(tmp_path / "m.onnx")


@pytest.mark.parametrize("args, error", [
    (["--precision_mode="], f"E10001: Value  for parameter --precision_mode {NOT_IN_RANGE} {MODE_RANGE}."),
    (["--precision_mode_v2", ""], f"E10001: Value  for parameter --precision_mode_v2 {NOT_IN_RANGE} {V2_RANGE}."),
    (["--precision-mode", "fp32"], f"E10001: Value fp32 for parameter --precision_mode {NOT_IN_RANGE} {MODE_RANGE}."),
    (["--op_debug_level=3.6"], f"E10001: Value 3.6 for parameter --op_debug_level {NOT_IN_RANGE} [0] [1] [2] [3] "
                               "[4] ."),
    (["--log=verbose"], "E10010: Value verbose for parameter --log is invalid."),
    (["--framework=6"], "E10007: --framework is required. The value must be 0(Caffe) or 1(MindSpore) or "
                        "3(TensorFlow) or 5(Onnx)."),
    (["--status_check=3"], "E10006: Value 3 for parameter --status_check is invalid. The value must be either 1 or 0."),
    (["--aicore_num"], "ERROR: flag '--aicore_num' is missing its argument"),
    (["--precison_mode=force_fp16"], "ERROR: unknown command line flag 'precison_mode'"),
    (["--precision=force_fp16"], "ERROR: unknown command line flag 'precision'"),  # ambiguous: two flags start so
    (["-x"], "ERROR: unknown command line flag 'x'"),
    (["force_fp16"], "ERROR: Non-option parameter: force_fp16"),
    (["--model="], "E10054: The required parameter --model for ATC is empty. Another possible reason is that the "
                   "values of some parameters are not enclosed by quotation marks (\"\")."),
])
def test_atc_standin_parses_its_command_line_as_atc_does(tmp_path, args, error):
    """hicann/ge api/atc/cmd_flag_info.cc (ParseCommandLine: getopt_long, every flag but --help takes a required
    argument; SetFlagValue checks kStrValueRange) and GE's unit tests (UtestMain.GeFlags_flag_value_empty01,
    GeFlags_flag_name_error01, GeFlags_non_option_parameter01, ...): refused before any model is read."""
    proc = _run_atc_standin(tmp_path, *args)
    assert proc.returncode == 255 and not (tmp_path / "m.om").exists()
    assert "ATC run failed, Please check the detail log" in proc.stdout
    assert atc_error(proc.stdout, proc.stderr) == error


def test_atc_standin_reads_flags_as_atc_does(tmp_path):
    """"--flag value" (UtestMain.GeFlags_param_ok04), "-flag" (GeFlags_param_single_minus), dashes in a flag name
    (GeFlags_param_include_dash) and a unique abbreviation of a flag (getopt_long) are accepted."""
    atc = install_tool(tmp_path, "atc", ATC)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    argv = [str(atc), "--framework", "5", "--model", str(tmp_path / "m.onnx"), "-output", str(tmp_path / "m"),
            "--input-format=NCHW", "--input_shape", "input:1,3,32,32", "--soc-version", "Ascend310P3", "--log", "error",
            "--precision_mode_v", "origin", "--op_select_implmode=high_precision"]
    proc = subprocess.run(argv, capture_output=True, text=True, env={"STANDIN_LOG": str(tmp_path)})
    assert proc.returncode == 0 and "ATC run success" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "m.om").read_text())["onnx"] == str(tmp_path / "m.onnx")
    proc = subprocess.run([*argv, "--precision-mode", "force_fp16"], capture_output=True, text=True,
                          env={"STANDIN_LOG": str(tmp_path)})
    assert atc_error(proc.stdout, proc.stderr) == ("E10056: Cannot configure both parameters ge.exec.precision_mode "
                                                   "and ge.exec.precision_mode_v2 simultaneously.")


# ATC prints its error messages with the GE error manager. Older CANN: "E10001: <message>" lines; newer ones
# (hicann/metadef error_manager/error_manager.cc at 9a3f9ae0, ErrorManager::GetErrorMessage) prefix each with the
# process id and time: "[PID: <pid>] <YYYY-MM-DD-hh:mm:ss.mmm.uuu> <errTitle>(<code>): <message>", then the
# indented "Possible Cause:", "Solution:" and "TraceBack" lines (E10001's errTitle is Invalid_Argument).
NEW_FORMAT = """ATC start working now, please wait for a moment.
ATC run failed, Please check the detail log, Try 'atc --help' for more information
[PID: 31337] 2025-06-01-10:00:00.123.456 Invalid_Argument(E10001): Value fp32 for parameter --precision_mode_v2 \
is invalid. Reason: The value is not within the range of values.
        Solution: Try again with a valid argument.
        TraceBack (most recent call last):
        Check flag value failed[FUNC:SetFlagValue][FILE:cmd_flag_info.cc][LINE:120]
"""
OLD_FORMAT = """ATC start working now, please wait for a moment.
ATC run failed, Please check the detail log, Try 'atc --help' for more information
E10001: Value fp32 for parameter --precision_mode_v2 is invalid. Reason: The value is not within the range of values.
        Solution: Try again with a valid argument.
        TraceBack (most recent call last):
        Check flag value failed[FUNC:SetFlagValue][FILE:cmd_flag_info.cc][LINE:120]
"""


def test_atc_error_reads_both_error_manager_formats():
    first = ("E10001: Value fp32 for parameter --precision_mode_v2 is invalid. Reason: The value is not within the "
             "range of values.")
    assert atc_error(OLD_FORMAT, "") == first
    assert atc_error(NEW_FORMAT, "") == first



# (option, value, how the stand-in's .om differs from the float32 model): the verify table's largest score difference
# against eager PyTorch, measured on the fitted tiny model: 3.6e-7 for origin, 1.0e-3 for force_fp16, 9.7e-4 for
# force_fp32 (float16 inputs of the matrix operators), 3.4e-4 for allow_fp32_to_fp16, 1.2e-2 for mixed_bfloat16
@pytest.mark.parametrize("option, value, scores_differ", [
    ("precision_mode_v2", "origin", (0.0, 1e-5)), ("precision_mode", "force_fp32", (1e-4, 5e-3)),
    ("precision_mode", "allow_fp32_to_fp16", (1e-4, 5e-3)), ("precision_mode_v2", "mixed_bfloat16", (2e-3, 2e-2))])
def test_om_of_each_precision_passes_verify_with_its_tolerances(make_ctx, exported_b1, monkeypatch, tmp_path, option,
                                                                 value, scores_differ):
    """The ais_bench stand-in runs the .om at the precision ATC built it with (deploy_standins.ATC_PRECISION_MODE):
    the half-precision ones differ from the float32 model by more than float32 rounding, and the verify stage's
    tolerances for that precision (deploy.verify.fp16 for all but origin) still match every detection."""
    put_tools_on_path(tmp_path, monkeypatch, atc=ATC, ais_bench=AIS_BENCH)
    ctx = make_ctx("deploy.backends=[om]", "deploy.batch_sizes=[1]", "deploy.om.launcher=ais_bench",
                   f"deploy.compile.{option}={value}", run_dir=exported_b1)
    result = run_compile(ctx)
    assert set(result["om"]) == {"1"} and not result["messages"]
    [row] = json.loads((exported_b1 / "verify" / "verify_compiled.json").read_text())["rows"]
    assert row["precision"] == ("fp32" if value == "origin" else "fp16")
    assert row["status"] == "ok" and row["unmatched"] == 0 and row["matched"] > 10
    low, high = scores_differ
    assert low <= row["score_max_diff"] < high
