"""Compile stage for Ascend 310P: ATC (.onnx -> .om) and torch_aie (TorchScript -> torch_aie module).

Every command is written to ``compile_310p.sh`` in the run directory whatever happens, so a run on a
machine without CANN gives the exact commands to replay on the 310P host. The script's paths are relative
to the run directory (it starts with ``cd`` to its own folder), so a run directory copied to the 310P host
works as it is; the pipeline runs the same commands from the run directory. A tool that is missing or
fails is reported in one line and the pipeline goes on with the backends that are available.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from solo_npu.deploy.context import DeployContext, write_json
from solo_npu.deploy.export import exported_file, load_manifest
from solo_npu.deploy.om import check_gears, find_om, last_line

RUNNER_FILE = Path(__file__).with_name("torch_aie_runner.py")

logger = logging.getLogger(__name__)

CANN_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
ERROR_CODE = re.compile(r"^E[A-Z0-9]\d{4}:")  # CANN error codes: E10001, EZ3003, EC0010, E19999, ...


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
) -> list[str]:
    """The ATC command line (framework 5 = ONNX); ``dynamic_batch`` gears use -1 as the batch dimension."""
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
    if dynamic_batch:
        cmd.append("--dynamic_batch_size=" + ",".join(map(str, check_gears(dynamic_batch))))
    if customize_dtypes:
        cmd.append(f"--customize_dtypes={customize_dtypes}")
    cmd.extend(str(a) for a in extra_args)
    return cmd


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
    lines += [shlex.join(cmd) for cmd in atc_cmds]
    if aie_args:  # the Python that has torch_aie: $PYTHON, else the configured one, else python3
        lines += ["", f'PYTHON="${{PYTHON:-{python or "python3"}}}"']
        lines += [f'"$PYTHON" {shlex.join([f"compile/{RUNNER_FILE.name}", *args])}' for args in aie_args]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
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
    """The reason ATC failed: its first error-code line (``E10031: ...``), else the last line of output.

    ATC prints "ATC run failed, Please check the detail log, ..." and then its error messages on stdout, each
    an ``EXXXXX: <message>`` line followed by indented cause / solution / TraceBack lines (hicann/ge,
    api/atc/main_impl.cc, ``CheckRet`` and ``OutputErrMessageToStdout``): the last line is a trace frame.
    """
    for text in (stdout, stderr):
        for line in (text or "").splitlines():
            if ERROR_CODE.match(line):
                return line.strip()
    return last_line(stderr) or last_line(stdout) or "no output"


def atc_jobs(ctx: DeployContext, manifest: Mapping[str, Any]) -> list[tuple[str, list[str], Path]]:
    """(key, ATC command run from the run directory, --output stem) per exported ONNX (and the dynamic one)."""
    settings, ccfg = ctx.settings, ctx.deploy_cfg.compile
    gears = check_gears(ccfg.dynamic_batch) if ccfg.dynamic_batch else []
    common = dict(input_name=manifest["input_name"], input_shape=settings.input_shape,
                  soc_version=settings.soc_version, precision_mode=ccfg.precision_mode, log=str(ccfg.log),
                  customize_dtypes=ccfg.customize_dtypes, atc=str(ccfg.atc), extra_args=list(ccfg.atc_args))
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
        ok, msg = _run_tool(cmd, f"atc (batch {key})", ccfg.timeout_s, cwd=ctx.run_dir)
        om_path = find_om(stem) if ok else None
        if om_path is not None:
            result["om"][key] = str(om_path)
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
            result["torch_aie"][key] = str(out)
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
    if compiled:
        result["verify"] = verify_backends(ctx, compiled, "verify_compiled.json")
    return result


def _note(result: dict[str, Any], message: str) -> None:
    logger.warning(message)
    result["messages"].append(message)
