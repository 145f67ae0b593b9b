"""Compile stage for Ascend 310P: ATC (.onnx -> .om) and torch_aie (TorchScript -> torch_aie module).

Every command is written to ``compile_310p.sh`` in the run directory whatever happens, so a run on a
machine without CANN gives the exact commands to replay on the 310P host. The script's paths are relative
to the run directory (it starts with ``cd`` to its own folder), so a run directory copied to the 310P host
works as it is; the pipeline runs the same commands from the run directory. A tool that is missing or
fails is reported in one line and the pipeline goes on with the backends that are available.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from solo_npu.deploy.context import DeployContext, DeployError, write_json
from solo_npu.deploy.export import exported_file, load_manifest
from solo_npu.deploy.om import check_gears, find_om, last_line, remove_om
from solo_npu.utils.files import atomic_write

RUNNER_FILE = Path(__file__).with_name("torch_aie_runner.py")

logger = logging.getLogger(__name__)

CANN_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
ERROR_CODE = re.compile(r"^E[A-Z0-9]\d{4}:")  # CANN error codes: E10001, EZ3003, EC0010, E19999, ...
# Newer GE error managers print each error as "[PID: <pid>] <YYYY-MM-DD-hh:mm:ss.mmm.uuu> <errTitle>(<code>): <message>"
# (hicann/metadef error_manager/error_manager.cc at 9a3f9ae0, ErrorManager::GetErrorMessage; E10001's errTitle is
# Invalid_Argument), an inner error's message line with its code in front and maybe no title
# (AssembleInnerErrorMessage: "E19999[PID: ...] <time> (E19999):  <message>").
ERROR_LINE = re.compile(r"^(?:E[A-Z0-9]\d{4})?\[PID: \d+\] \S+ \S*\((E[A-Z0-9]\d{4})\):\s*(.*)$")

# ATC's two precision options and the values it takes: CANN "ATC Instructions" (hiascend.com, atctool),
# --precision_mode (atlasatcparam_16_0068) and --precision_mode_v2 (atlasatcparam_16_0069), and the open GE source
# (hicann/ge, api/atc/atc_flags.cc DEFINE_string(precision_mode / precision_mode_v2); compiler/api/aclgrph/
# option_utils.cc CheckPrecisionModeParamValid / CheckPrecisionModeV2ParamValid). Older CANN releases take a subset
# (mixed_hif8 and cube_hif8 are newer than the rest). On ATC's command line an empty value is no "not set": its flag
# parser checks every value given against these sets first (hicann/ge api/atc/cmd_flag_info.cc at a0668444,
# kStrValueRange and CmdFlagInfo::SetFlagValue), so "--precision_mode=" fails with E10001.
ATC_PRECISION_VALUES: dict[str, tuple[str, ...]] = {
    "precision_mode": ("force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_mix_precision", "allow_fp32_to_fp16",
                       "must_keep_origin_dtype", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                       "allow_fp32_to_bf16"),
    "precision_mode_v2": ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8",
                          "mixed_hif8"),
}
# The one value of each that keeps every float32 operator in float32 ("保持原图精度", keep the original graph's
# precision: an operator AI Core has no float32 kernel for runs as a float32 AI CPU operator, else ATC fails).
# GE reads both as the same mode (hicann/ge, compiler/engines/nn_engine/utils/common/fe_context_utils.cc,
# kPrecisionModeMap: MUST_KEEP_ORIGIN_DTYPE and V2_ORIGIN -> ENUM_MUST_KEEP_ORIGIN_DTYPE).
ATC_KEEPS_FP32 = {"precision_mode": "must_keep_origin_dtype", "precision_mode_v2": "origin"}
# How ATC's parser reads a flag (hicann/ge api/atc/cmd_flag_info.cc at a0668444, ParseCommandLine -> FormatArgv):
# ReplaceFlagPrefixSingleMinus makes "-name" (two or more letters) "--name", ReplaceFlagNameMinus turns every "-" of
# the name (up to "=") into "_", so --precision-mode=X and -precision_mode X are --precision_mode; then getopt_long
# (mmGetOptLong; every string flag has a required argument) takes "--name=VALUE" or "--name VALUE", and a unique
# abbreviation of a long name as that name (glibc manual, getopt.texi: "The option name may be abbreviated as long
# as the abbreviation is unique"): --precision_mode_ and --precision_mode_v are --precision_mode_v2.
ATC_PRECISION_ARG = re.compile(r"^--(precision_mode(?:_(?:v2?)?)?)(?:=(.*))?$")


def _atc_flag(arg: str) -> str:
    """``arg`` as ATC's parser reads its flag name (cmd_flag_info.cc, FormatArgv): "--" prefix, "_" in the name."""
    arg = re.sub(r"^-(?=[A-Za-z]{2,})", "--", arg)
    if not re.match(r"^--[A-Za-z]{2,}", arg):
        return arg
    name, eq, value = arg.partition("=")
    return name[:4] + name[4:].replace("-", "_") + eq + value


# The ATC flags the compile stage sets itself, with the setting that owns each. deploy.compile.atc_args come last on
# ATC's command line, and its parser takes the last value of a flag given twice (cmd_flag_info.cc SetFlagValue), so
# one of these there would compile another file (--model), write the .om where the stage does not look (--output),
# or build another input (--input_shape) or chip (--soc_version) than the run's, without a word.
# flag -> (what sets it, the setting to use instead or None)
ATC_OWNED_FLAGS: dict[str, tuple[str, str | None]] = {
    "model": ("the exported ONNX", None), "output": ("the compile/ folder", None), "framework": ("5, ONNX", None),
    "input_format": ("NCHW", None), "input_shape": ("deploy.input_shape and the batch size", "deploy.input_shape"),
    "soc_version": ("deploy.soc_version", "deploy.soc_version"),
    "dynamic_batch_size": ("deploy.compile.dynamic_batch", "deploy.compile.dynamic_batch"),
    "customize_dtypes": ("deploy.compile.customize_dtypes", "deploy.compile.customize_dtypes"),
}
# Flags of ATC (hicann/ge api/atc/atc_flags.cc) whose name begins another's owned name: getopt_long takes an exact
# name first, so --mode=0 is the conversion mode, not an abbreviation of --model.
_ATC_EXACT_NOT_OWNED = {"mode"}


def check_atc_args(extra_args: Sequence[str]) -> None:
    """Refuse ``deploy.compile.atc_args`` that set a flag of :data:`ATC_OWNED_FLAGS`, read as ATC reads flag names
    (:func:`_atc_flag`: "-name" and "--name-with-dashes" are "--name_with_dashes"; a unique abbreviation is the
    flag): one line naming the setting that owns it, before anything runs."""
    for arg in (str(a) for a in extra_args):
        flag = _atc_flag(arg)
        if not flag.startswith("--"):
            continue
        name = flag[2:].split("=", 1)[0]
        if not name or name in _ATC_EXACT_NOT_OWNED:
            continue
        owned = [f for f in ATC_OWNED_FLAGS if f == name] or [f for f in ATC_OWNED_FLAGS if f.startswith(name)]
        if owned:
            what, setting = ATC_OWNED_FLAGS[owned[0]]
            raise DeployError(f"deploy.compile.atc_args sets {arg!r} (--{owned[0]}), which the compile stage sets "
                              f"itself ({what}): drop it" + (f", or set {setting}" if setting else ""))


def atc_command(
    onnx_path: str | Path,
    output: str | Path,
    input_name: str,
    batch_size: int,
    input_shape: Sequence[int],
    soc_version: str = "Ascend310P3",
    precision_mode: str | None = None,
    log: str = "error",
    dynamic_batch: Sequence[int] | None = None,
    customize_dtypes: str | Path | None = None,
    atc: str = "atc",
    extra_args: Sequence[str] = (),
    precision_mode_v2: str | None = None,
) -> list[str]:
    """The ATC command line (framework 5 = ONNX); ``dynamic_batch`` gears use -1 as the batch dimension.

    ``precision_mode`` / ``precision_mode_v2`` become ``--precision_mode=`` / ``--precision_mode_v2=``; setting both
    (here or in ``extra_args``) is a DeployError before ATC runs, as ATC refuses it (:func:`atc_precision`).
    """
    check_atc_args(extra_args)
    atc_precision(precision_mode, precision_mode_v2, extra_args)
    h, w = int(input_shape[0]), int(input_shape[1])
    batch = "-1" if dynamic_batch else str(int(batch_size))
    cmd = [
        atc,
        "--framework=5",
        f"--model={onnx_path}",
        f"--output={output}",
        "--input_format=NCHW",
        f"--input_shape={input_name}:{batch},3,{h},{w}",
        f"--soc_version={soc_version}",
        f"--log={log}",
    ]
    if precision_mode:
        cmd.append(f"--precision_mode={precision_mode}")
    if precision_mode_v2:
        cmd.append(f"--precision_mode_v2={precision_mode_v2}")
    if dynamic_batch:
        cmd.append("--dynamic_batch_size=" + ",".join(map(str, check_gears(dynamic_batch))))
    if customize_dtypes:
        cmd.append(f"--customize_dtypes={customize_dtypes}")
    cmd.extend(str(a) for a in extra_args)
    return cmd


def atc_precision(precision_mode: str | None = None, precision_mode_v2: str | None = None,
                  extra_args: Sequence[str] = ()) -> tuple[str, str] | None:
    """The one ATC precision option a command sets, as (option, value), from ``deploy.compile.precision_mode``,
    ``deploy.compile.precision_mode_v2`` and ``--precision_mode=...`` / ``--precision_mode_v2=...`` in
    ``deploy.compile.atc_args`` (read as ATC reads them: ``--precision_mode VALUE``, ``--precision-mode=VALUE``,
    ``-precision_mode_v2`` and the abbreviations ``--precision_mode_v`` and ``--precision_mode_`` of v2 are the
    same flags, :data:`ATC_PRECISION_ARG`); None when none is set, so ATC's default applies (``force_fp16``, v2
    ``fp16``). An empty config value is not set (not passed to ATC).

    ATC refuses the two options together: "该参数不能与--precision_mode参数同时使用" (ATC Instructions,
    --precision_mode_v2), and ATC's flag check fails with E10056 "Cannot configure both parameters %s and %s
    simultaneously." before it reads the model (hicann/ge, api/atc/main_impl.cc ``CheckPrecisionRelatedFlags`` ->
    compiler/api/aclgrph/option_utils.cc ``CheckPrecisionModeV2Conflict``).

    Raises:
        DeployError: both options set, or one set twice with different values (config and ``atc_args``), or one
            in ``atc_args`` without a value or with an empty one (ATC's flag parser refuses "" as a value outside
            the option's range, E10001: api/atc/cmd_flag_info.cc, ``SetFlagValue``); one line naming where each
            came from.
    """
    found: dict[str, tuple[str, str]] = {}  # option -> (value, where it was set)
    given = [("precision_mode", precision_mode, "deploy.compile.precision_mode={}"),
             ("precision_mode_v2", precision_mode_v2, "deploy.compile.precision_mode_v2={}")]
    args = [str(a) for a in extra_args]
    for i, arg in enumerate(args):
        match = ATC_PRECISION_ARG.match(_atc_flag(arg))
        if match is None:
            continue
        option = "precision_mode" if match.group(1) == "precision_mode" else "precision_mode_v2"
        value = match.group(2)
        if value is None:  # "--precision_mode VALUE", as ATC's getopt_long also reads it
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise DeployError(f"{arg!r} in deploy.compile.atc_args has no value: write --{option}=VALUE")
            value = args[i + 1]
        if value == "":
            raise DeployError(f"{arg!r} in deploy.compile.atc_args has an empty value: ATC refuses it (E10001); "
                              "give a value or leave it out")
        given.append((option, value, f"--{option}={{}} in deploy.compile.atc_args"))
    for option, value, where in given:
        if value is None or str(value) == "":
            continue
        value = str(value)
        if option in found and found[option][0] != value:
            raise DeployError(f"{found[option][1]} and {where.format(value)} both set ATC's --{option}: set it once")
        found.setdefault(option, (value, where.format(value)))
    if len(found) > 1:
        raise DeployError(f"{found['precision_mode'][1]} and {found['precision_mode_v2'][1]}: ATC refuses "
                          "--precision_mode together with --precision_mode_v2 (E10056): set only one")
    if not found:
        return None
    option, (value, where) = next(iter(found.items()))
    if value not in ATC_PRECISION_VALUES[option]:
        _warn_unknown_precision(option, where)
    return option, value


@functools.cache
def _warn_unknown_precision(option: str, where: str) -> None:
    logger.warning("%s is not a value the ATC Instructions list for --%s (%s); ATC refuses a value it does not "
                   "know (E10001); the om backend is verified with the deploy.verify.fp16 tolerances", where, option,
                   ", ".join(ATC_PRECISION_VALUES[option]))


def om_precision(setting: tuple[str, str] | None) -> str:
    """``"fp32"`` or ``"fp16"`` for an .om built with the ATC precision ``setting`` (:func:`atc_precision`):
    the verify tolerances and the report's precision column.

    Only the value that keeps the original precision, ``must_keep_origin_dtype`` or v2 ``origin``
    (:data:`ATC_KEEPS_FP32`), is ``"fp32"``. Every other mode runs some float32 operators in a narrower type, per
    the ATC Instructions:

    - no option: ATC's default, ``force_fp16`` ("默认值"; v2's default is ``fp16``), on 310P as on every SoC:
      float16 wherever an operator has it. GE picks a default by SoC only for training (``must_keep_origin_dtype``
      where the Cube unit has high precision, else ``allow_fp32_to_fp16``; ``force_fp16`` outside training:
      hicann/ge fe_context_utils.cc ``SetDefaultPrecisionMode``);
    - ``force_fp32`` / ``cube_fp16in_fp32out`` (one mode: "效果等同", and fe_context_utils.cc maps both to
      ENUM_FORCE_FP32): vector operators in float32, but matrix (Cube) operators, the convolutions, take float16
      inputs first;
    - ``allow_fp32_to_fp16``: matrix operators lowered to float16 first;
    - the mixed modes (``allow_mix_precision*``, ``mixed_float16``, ``mixed_bfloat16``): the operators of the
      built-in list lowered to float16 / bfloat16; ``allow_fp32_to_bf16``: to bfloat16;
    - ``cube_hif8`` / ``mixed_hif8``: the 8-bit HiFloat8, coarser than even the fp16 tolerances assume.

    These mixed modes are therefore ``"fp16"`` (the half-precision tolerances), as is an unknown value (ATC
    refuses it; :func:`atc_precision` logs a WARNING).
    """
    if setting is None:
        return "fp16"
    option, value = setting
    return "fp32" if ATC_KEEPS_FP32.get(option) == value else "fp16"


def torch_aie_args(ts_path: str | Path, out_path: str | Path, batch_size: int, input_shape: Sequence[int],
                   soc_version: str, precision_policy: str = "FP16", device_id: int = 0) -> list[str]:
    """Arguments of ``torch_aie_runner.py compile`` for one TorchScript file (see that module)."""
    h, w = int(input_shape[0]), int(input_shape[1])
    return ["compile", "--ts", str(ts_path), "--out", str(out_path), "--batch-size", str(int(batch_size)),
            "--height", str(h), "--width", str(w), "--soc-version", soc_version,
            "--precision-policy", precision_policy, "--device-id", str(int(device_id))]


def write_compile_script(path: Path, atc_cmds: Sequence[Sequence[str]], aie_args: Sequence[Sequence[str]],
                         python: str | None = None) -> Path:
    lines = ["#!/usr/bin/env bash", "# Ascend 310P compilation commands written by deploy.py; run on the 310P host.",
             "# Paths are relative to this script's folder (the run directory), so the folder can be copied.",
             "set -euo pipefail", 'cd "$(dirname "$0")"',
             "# CANN's environment ($CANN_SET_ENV picks another install). Its set_env.sh appends to variables that",
             "# may be unset (export PYTHONPATH=...:$PYTHONPATH, the same for LD_LIBRARY_PATH): sourced without -u.",
             f'CANN_SET_ENV="${{CANN_SET_ENV:-{CANN_ENV}}}"',
             'if [ -f "$CANN_SET_ENV" ]; then set +u; source "$CANN_SET_ENV"; set -u; fi', ""]
    for cmd in atc_cmds:  # an earlier run's .om of either name would be found instead of the new one (remove_om)
        out = next((a.split("=", 1)[1] for a in cmd if a.startswith("--output=")), None)
        if out is not None:
            lines.append(f"rm -f {shlex.quote(out + '.om')} {shlex.quote(out)}_*_*.om")
        lines.append(shlex.join(cmd))
    if aie_args:  # the Python that has torch_aie: $PYTHON, else the configured one, else python3
        lines += ["", f'PYTHON="${{PYTHON:-{python or "python3"}}}"']
        lines += [f'"$PYTHON" {shlex.join([f"compile/{RUNNER_FILE.name}", *args])}' for args in aie_args]
    with atomic_write(path) as f:  # executable before it takes the name
        f.write("\n".join(lines) + "\n")
        os.fchmod(f.fileno(), 0o755)
    return path


def device_id(ctx: DeployContext) -> int:
    from solo_npu.deploy.backends import device_id as chosen

    return chosen(ctx)


def relative(path: str | Path, run_dir: Path) -> str:
    """``path`` relative to the run directory (how compile_310p.sh and the tool runs name files)."""
    return os.path.relpath(Path(path).resolve(), run_dir.resolve())


def _run_tool(cmd: Sequence[str], what: str, timeout: float | None, cwd: Path | None = None) -> tuple[bool, str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{what} could not run: {exc}"
    if proc.returncode != 0:
        return False, f"{what} failed (exit {proc.returncode}): {atc_error(proc.stdout, proc.stderr)}"
    return True, ""


def atc_error(stdout: str, stderr: str) -> str:
    """The reason ATC failed: its first error-code line as ``E10031: <message>``, else the last line of output.

    ATC prints "ATC run failed, Please check the detail log, ..." and then its error messages on stdout, each
    an ``EXXXXX: <message>`` line, or on newer CANN a ``[PID: n] <time> <title>(EXXXXX): <message>`` line
    (:data:`ERROR_LINE`), followed by indented cause / solution / TraceBack lines (hicann/ge, api/atc/main_impl.cc,
    ``CheckRet`` and ``OutputErrMessageToStdout``): the last line is a trace frame.
    """
    for text in (stdout, stderr):
        for line in (text or "").splitlines():
            if ERROR_CODE.match(line):
                return line.strip()
            found = ERROR_LINE.match(line.strip())
            if found:
                return f"{found.group(1)}: {found.group(2).strip()}"
    return last_line(stderr) or last_line(stdout) or "no output"


def _customize_dtypes(ctx: DeployContext, value: Any) -> str | None:
    """``deploy.compile.customize_dtypes`` (a path relative to the launch directory, or absolute) copied into the run
    directory and named relative to it, as ATC runs there and compile_310p.sh travels with the run directory to
    the 310P host. ATC refuses a file it cannot read (CANN OpCustDtypesConfigParser: "The customize file does not
    exist or its access permission is denied"): a missing one is one line here instead."""
    if not value:
        return None
    src = Path(str(value)).expanduser()
    if not src.is_file():
        raise DeployError(f"deploy.compile.customize_dtypes={value}: no such file (cwd {Path.cwd()})")
    dst = ctx.path("compile", src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return relative(dst, ctx.run_dir)


def atc_jobs(ctx: DeployContext, manifest: Mapping[str, Any]) -> list[tuple[str, list[str], Path]]:
    """(key, ATC command run from the run directory, --output stem) per exported ONNX (and the dynamic one)."""
    settings, ccfg = ctx.settings, ctx.deploy_cfg.compile
    gears = check_gears(ccfg.dynamic_batch) if ccfg.dynamic_batch else []
    common = dict(input_name=manifest["input_name"], input_shape=settings.input_shape,
                  soc_version=settings.soc_version, precision_mode=ccfg.precision_mode,
                  precision_mode_v2=ccfg.precision_mode_v2, log=str(ccfg.log),
                  customize_dtypes=_customize_dtypes(ctx, ccfg.customize_dtypes),
                  atc=str(ccfg.atc), extra_args=list(ccfg.atc_args))
    jobs = []
    for key in [*map(str, settings.export_batch_sizes), *(["dynamic"] if gears else [])]:
        onnx_path = exported_file(manifest, "onnx", key)
        if onnx_path:
            stem = ctx.path("compile", f"model_b{key}" if key != "dynamic" else "model_dynamic")
            cmd = atc_command(relative(onnx_path, ctx.run_dir), relative(stem, ctx.run_dir),
                              batch_size=int(key) if key != "dynamic" else -1,
                              dynamic_batch=gears if key == "dynamic" else None, **common)
            jobs.append((key, cmd, stem))
    return jobs


def torch_aie_jobs(ctx: DeployContext, manifest: Mapping[str, Any], policy: str,
                   device: int) -> list[tuple[str, list[str], Path]]:
    """(batch size, runner arguments relative to the run directory, compiled module) per exported TorchScript."""
    jobs = []
    for bs in ctx.settings.export_batch_sizes:
        ts_path = exported_file(manifest, "torchscript", bs)
        if ts_path:
            out = ctx.path("compile", f"model_b{bs}_torch_aie.ts")
            jobs.append((str(bs), torch_aie_args(relative(ts_path, ctx.run_dir), relative(out, ctx.run_dir), bs,
                                                 ctx.settings.input_shape, ctx.settings.soc_version, policy, device),
                         out))
    return jobs


def compile_om(ctx: DeployContext, result: dict[str, Any]) -> None:
    """Run ATC for every exported ONNX; the .om files found go to ``result["om"]``, the gears of the dynamic-batch
    one to ``result["om_gears"]`` (ais_bench runs it at those batch sizes only)."""
    ccfg = ctx.deploy_cfg.compile
    atc = str(ccfg.atc)
    jobs = atc_jobs(ctx, load_manifest(ctx))
    if not jobs:
        return
    if shutil.which(atc) is None:
        _note(result, f"atc not found on PATH (source {CANN_ENV} on the 310P host); "
                      f"the ATC commands are in {result['script']}; continuing without the om backend")
        return
    for key, cmd, stem in jobs:
        for path in remove_om(stem):
            logger.info("removed %s of an earlier ATC run before compiling batch %s again", path.name, key)
        ok, msg = _run_tool(cmd, f"atc (batch {key})", ccfg.timeout_s, cwd=ctx.run_dir)
        om_path = find_om(stem) if ok else None
        if om_path is not None:
            result["om"][key] = relative(om_path, ctx.run_dir)  # compiled_file resolves it in the run directory
            if key == "dynamic":
                result["om_gears"] = check_gears(ccfg.dynamic_batch)
        else:
            _note(result, msg or f"atc (batch {key}) wrote neither {stem}.om nor {stem}_<os>_<arch>.om")


def compile_torch_aie(backend: Any, manifest: Mapping[str, Any], result: dict[str, Any]) -> None:
    """torch_aie.compile every exported TorchScript, in process or in ``deploy.torch_aie.python``."""
    from solo_npu.deploy import torch_aie_runner

    ctx = backend.ctx
    jobs = torch_aie_jobs(ctx, manifest, backend.policy, device_id(ctx))
    if not jobs:
        return
    traced_on = manifest.get("traced_on", "cpu")  # manifests written before it was recorded: as before
    if traced_on != "cpu":
        _note(result, f"torch_aie compile: the TorchScript files were traced on {traced_on}, and a trace keeps that "
                      "device in its tensors and device arguments; torch_aie compiles a CPU trace (the Ascend ModelZoo "
                      "SOLOV2 torch_aie guide traces on the CPU): export again with device=cpu; continuing without "
                      "torch_aie")
        return
    why = backend.why_no_tool()
    if why is not None:
        _note(result, f"{why}; the compile commands are in {result['script']}; continuing without torch_aie")
        return
    for key, args, out in jobs:
        try:
            if backend.python:
                backend.run_tool(args, f"torch_aie compile (batch {key})")
            else:
                opts = dict(zip(args[1::2], args[2::2]))
                torch_aie_runner.compile_module(
                    str(ctx.run_dir / opts["--ts"]), str(out), int(opts["--batch-size"]), int(opts["--height"]),
                    int(opts["--width"]), opts["--soc-version"], opts["--precision-policy"],
                    int(opts["--device-id"]))
        except Exception as exc:  # vendor compiler errors come in many types
            _note(result, f"torch_aie compile (batch {key}) failed: {(str(exc).splitlines() or [repr(exc)])[0]}")
            continue
        if out.is_file():
            result["torch_aie"][key] = relative(out, ctx.run_dir)
        else:
            _note(result, f"torch_aie compile (batch {key}) wrote no {out}")


def run_compile(ctx: DeployContext) -> dict[str, Any]:
    """Write compile_310p.sh (every command for every exported model), prepare the enabled backends, then
    compare what they compiled with eager PyTorch on the verify images."""
    from solo_npu.deploy.backends import TorchAieBackend, build_backends
    from solo_npu.deploy.verify import verify_backends

    manifest = load_manifest(ctx)
    out_dir = ctx.path("compile")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNNER_FILE, out_dir / RUNNER_FILE.name)  # the run dir carries its torch_aie runner
    aie = TorchAieBackend(ctx)
    script = write_compile_script(ctx.run_dir / "compile_310p.sh", [j[1] for j in atc_jobs(ctx, manifest)],
                                  [j[1] for j in torch_aie_jobs(ctx, manifest, aie.policy, device_id(ctx))],
                                  aie.python)
    result: dict[str, Any] = {"script": str(script), "om": {}, "torch_aie": {}, "messages": []}
    backends = build_backends(ctx)
    for backend in backends:
        backend.prepare(manifest, result)
    write_json(out_dir / "compile.json", result)
    compiled = [b for b in backends if result.get(b.name)]
    if compiled:  # a compiled model that fails or mismatches: BackendFailures, the pipeline goes on
        result["verify"] = verify_backends(ctx, compiled, "verify_compiled.json")
    else:  # no table of an earlier compile stays to be read as this one's
        ctx.path("verify", "verify_compiled.json").unlink(missing_ok=True)
    return result


def _note(result: dict[str, Any], message: str) -> None:
    logger.warning(message)
    result["messages"].append(message)
