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
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from solo_npu.deploy.context import DeployContext, write_json
from solo_npu.deploy.export import exported_file, load_manifest
from solo_npu.deploy.om import check_gears, find_om
from solo_npu.deploy.runners import import_optional

logger = logging.getLogger(__name__)

CANN_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"


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


def torch_aie_script(ts_path: str | Path, out_path: str | Path, batch_size: int, input_shape: Sequence[int],
                     soc_version: str, precision_policy: str = "FP16", device_id: int = 0) -> str:
    """A self-contained Python snippet that compiles one TorchScript file with torch_aie."""
    h, w = int(input_shape[0]), int(input_shape[1])
    return (
        "import torch, torch_aie\n"
        f"torch_aie.set_device({int(device_id)})\n"
        f"ts = torch.jit.load({str(ts_path)!r}).eval()\n"
        f"inputs = [torch_aie.Input(({int(batch_size)}, 3, {h}, {w}))]\n"
        f"module = torch_aie.compile(ts, inputs=inputs, precision_policy=torch_aie.PrecisionPolicy.{precision_policy},"
        f" soc_version={soc_version!r})\n"
        f"module.save({str(out_path)!r})\n"
    )


def write_compile_script(path: Path, atc_cmds: Sequence[Sequence[str]], aie_snippets: Sequence[str]) -> Path:
    lines = ["#!/usr/bin/env bash", "# Ascend 310P compilation commands written by deploy.py; run on the 310P host.",
             "# Paths are relative to this script's folder (the run directory), so the folder can be copied.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', f"if [ -f {CANN_ENV} ]; then source {CANN_ENV}; fi", ""]
    lines += [shlex.join(cmd) for cmd in atc_cmds]
    for snippet in aie_snippets:
        lines += ["", "python3 - <<'EOF'", snippet.rstrip("\n"), "EOF"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def relative(path: str | Path, run_dir: Path) -> str:
    """``path`` relative to the run directory (how compile_310p.sh and the tool runs name files)."""
    return os.path.relpath(Path(path).resolve(), run_dir.resolve())


def _run_tool(cmd: Sequence[str], what: str, timeout: float | None, cwd: Path | None = None) -> tuple[bool, str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{what} could not run: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return False, f"{what} failed (exit {proc.returncode}): {tail[0]}"
    return True, ""


def run_compile(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    settings = ctx.settings
    ccfg: Mapping[str, Any] = ctx.deploy_cfg.get("compile") or {}
    out_dir = ctx.path("compile")
    out_dir.mkdir(parents=True, exist_ok=True)
    backends = settings.backends
    atc = str(ccfg.get("atc") or "atc")
    gears = check_gears(ccfg["dynamic_batch"]) if ccfg.get("dynamic_batch") else []
    common = dict(input_name=manifest["input_name"], input_shape=settings.input_shape,
                  soc_version=settings.soc_version, precision_mode=ccfg.get("precision_mode"),
                  log=str(ccfg.get("log") or "error"), customize_dtypes=ccfg.get("customize_dtypes"), atc=atc,
                  extra_args=list(ccfg.get("atc_args") or []))
    # Commands for every exported model go into the script; tools run only for the enabled backends.
    run_dir = ctx.run_dir
    jobs: list[tuple[str, list[str], Path]] = []  # (key, command run from the run dir, --output stem)
    for key in [*map(str, settings.export_batch_sizes), *(["dynamic"] if gears else [])]:
        onnx_path = exported_file(manifest, "onnx", key)
        if onnx_path:
            stem = out_dir / f"model_b{key}" if key != "dynamic" else out_dir / "model_dynamic"
            cmd = atc_command(relative(onnx_path, run_dir), relative(stem, run_dir),
                              batch_size=int(key) if key != "dynamic" else -1,
                              dynamic_batch=gears if key == "dynamic" else None, **common)
            jobs.append((key, cmd, stem))
    aie_policy = str((ccfg.get("torch_aie") or {}).get("precision_policy") or "FP16")
    aie_jobs: list[tuple[str, str, Path]] = []  # (key, python snippet, expected module)
    script_snippets: list[str] = []
    for bs in settings.export_batch_sizes:
        ts_path = exported_file(manifest, "torchscript", bs)
        if ts_path:
            out = out_dir / f"model_b{bs}_torch_aie.ts"
            aie_jobs.append((str(bs), torch_aie_script(ts_path, out, bs, settings.input_shape, settings.soc_version,
                                                       aie_policy, ctx.device.index), out))
            script_snippets.append(torch_aie_script(relative(ts_path, run_dir), relative(out, run_dir), bs,
                                                    settings.input_shape, settings.soc_version, aie_policy,
                                                    ctx.device.index))
    script = write_compile_script(run_dir / "compile_310p.sh", [j[1] for j in jobs], script_snippets)
    result: dict[str, Any] = {"script": str(script), "om": {}, "torch_aie": {}, "messages": []}
    if jobs and "om" in backends:
        if shutil.which(atc) is None:
            _note(result, f"atc not found on PATH (source {CANN_ENV} on the 310P host); "
                          f"the ATC commands are in {script}; continuing without the om backend")
        else:
            for key, cmd, stem in jobs:
                ok, msg = _run_tool(cmd, f"atc (batch {key})", ccfg.get("timeout_s"), cwd=run_dir)
                om_path = find_om(stem) if ok else None
                if om_path is not None:
                    result["om"][key] = str(om_path)
                else:
                    _note(result, msg or f"atc (batch {key}) wrote neither {stem}.om nor {stem}_<os>_<arch>.om")
    if aie_jobs and "torch_aie" in backends:
        if import_optional("torch_aie") is None:
            _note(result, f"torch_aie is not installed; the compile snippet is in {script}; "
                          "continuing without the torch_aie backend")
        else:
            for key, snippet, out in aie_jobs:
                try:
                    exec(compile(snippet, "<torch_aie compile>", "exec"), {})  # the same code the script holds
                    result["torch_aie"][key] = str(out)
                except Exception as exc:  # vendor compiler errors come in many types
                    _note(result, f"torch_aie compile (batch {key}) failed: {str(exc).splitlines()[0]}")
    write_json(out_dir / "compile.json", result)
    return result


def _note(result: dict[str, Any], message: str) -> None:
    logger.warning(message)
    result["messages"].append(message)
