"""The om backend's tools: ATC output names, ais_bench as a subprocess, and readers for what it writes.

What the real tools do (and the test stand-ins copy):

- ATC ``--output=<stem>`` writes ``<stem>.om`` or, depending on the CANN version and the
  ``--host_env_os`` / ``--host_env_cpu`` settings, ``<stem>_<os>_<arch>.om`` such as
  ``model_b1_linux_x86_64.om`` (CANN "ATC Instructions", ``--output``).
- ATC ``--dynamic_batch_size`` takes between 2 and 100 gears (CANN "ATC Instructions",
  ``--dynamic_batch_size``: "档位数取值范围为(1,100]").
- ais_bench (Ascend/tools, ``ais-bench_workload/tool/ais_bench/ais_bench/infer``) writes its outputs to
  ``<output>/<output_dirname>/`` (``__main__.py``, ``main``: ``output_prefix = os.path.join(args.output,
  args.output_dirname)``), one ``<name>_<i>.bin`` per model output ``i`` where ``<name>`` is the input
  file's basename up to its first dot (``io_oprations.py``, ``save_tensors_to_file``:
  ``os.path.basename(...).split('.')[0]``), and its timings to ``<output>/<output_dirname>_summary.json``
  (``summary.py``, ``Summary.report``: ``open(output_prefix + "_summary.json")``) with
  ``NPU_compute_time {min, max, mean, median, percentile(99%), count}``, ``H2D_latency``,
  ``D2H_latency`` (ms) and ``throughput`` (1000 x batch size / mean NPU compute time).

For batch sizes above 1 we concatenate B preprocessed images into one input file ourselves
(``batch_00000.bin`` ...), so the grouping never depends on the tool, and split its outputs back into images.

Newer ais_bench releases refuse paths others could change (the same tool in Yanguan619/aclruntime,
``ais_bench/infer/common/path_security_check.py``, ``FileStat.check_linux_permission``): the ``.om``, the
``--input`` files and folders and every entry of an input folder must not be a symbolic link nor group or
other writable ("permission should not be over 0o755"), an existing ``--output`` folder must not be group
writable nor open to others at all ("should not be over 0o750"; ``infer/args_check.py``,
``check_output_path_legality``) and an existing ``<output>/<output_dirname>`` not group or other writable
(``infer_process.py`` ``main``: ``check_output_dir_legality``; a missing one it makes 0o750 itself). So whatever
the umask, what is handed to ais_bench is made :data:`PRIVATE_FILE` / :data:`PRIVATE_DIR` at most
(:func:`owner_only`, :func:`owner_only_dir`), and the output folder is left for ais_bench to make.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.deploy.context import DeployError

logger = logging.getLogger(__name__)

MAX_GEARS = 100  # ATC --dynamic_batch_size: (1, 100] gears
AIS_BENCH_MODULES = ("ais_bench", "aclruntime")  # the two wheels python -m ais_bench imports
AIS_BENCH_INPUT_SUFFIXES = (".bin", ".BIN", ".npy", ".NPY")  # what it reads from an input folder
MAX_ARG_CHARS = 100_000  # one command-line argument: Linux refuses more than 128 KiB (MAX_ARG_STRLEN)
PRIVATE_FILE, PRIVATE_DIR = 0o640, 0o750  # the most a file / folder handed to ais_bench may allow
NOT_FOR_OTHERS = 0o027  # the bits both take away: group write, and anything for others


def _host_named(stem: Path) -> tuple[re.Pattern[str], list[Path]]:
    """The pattern of ``<stem>_<os>_<arch>.om`` and the files next to ``stem`` that match it, sorted."""
    pattern = re.compile(rf"^{re.escape(stem.name)}_([a-z]+)_([a-z0-9_]+)\.om$")
    return pattern, sorted(p for p in stem.parent.glob(f"{stem.name}_*.om") if pattern.match(p.name))


def find_om(stem: str | Path) -> Path | None:
    """The ``.om`` ATC wrote for ``--output=<stem>``: ``<stem>.om``, else ``<stem>_<os>_<arch>.om``.

    When several ``<os>_<arch>`` variants exist the one for this host is preferred.
    """
    stem = Path(stem)
    plain = stem.parent / f"{stem.name}.om"
    if plain.is_file():
        return plain
    pattern, found = _host_named(stem)
    host = f"{stem.name}_{platform.system().lower()}_{platform.machine().lower()}.om"
    for path in found:
        if path.name == host:
            return path
    if found:
        logger.warning("%s was built for another host (%s); ais_bench may refuse it here", found[0],
                       pattern.match(found[0].name).group(1, 2))
        return found[0]
    return None


def remove_om(stem: str | Path) -> list[Path]:
    """Delete what an earlier ATC run wrote for ``--output=<stem>`` (``<stem>.om`` and ``<stem>_<os>_<arch>.om``),
    before ATC runs again: ATC names its file either way (ATC Instructions, ``--output``), so an old file of the
    other name would otherwise be found instead of the new one (another CANN, another precision mode).

    Returns:
        The files removed.
    """
    stem = Path(stem)
    plain = stem.parent / f"{stem.name}.om"
    stale = ([plain] if plain.is_file() else []) + _host_named(stem)[1]
    for path in stale:
        path.unlink()
    return stale


def check_gears(gears: Sequence[int]) -> list[int]:
    """ATC dynamic batch gears: 2 to 100 distinct positive sizes, else a one-line DeployError."""
    gears = [int(g) for g in gears]
    if not 1 < len(gears) <= MAX_GEARS or len(set(gears)) != len(gears) or min(gears) < 1:
        raise DeployError(f"deploy.compile.dynamic_batch={gears}: ATC's --dynamic_batch_size needs 2 to {MAX_GEARS} "
                          "distinct positive gears, e.g. [1,2,4,8] (for one batch size use deploy.batch_sizes)")
    return gears


def output_name(input_file: str | Path) -> str:
    """The ``<name>`` of ais_bench's ``<name>_<i>.bin`` for an input file: its basename up to the first dot."""
    return Path(input_file).name.split(".")[0]


def summary_path(output: str | Path, output_dirname: str) -> Path:
    """Where ais_bench writes its timings: ``<output>/<output_dirname>_summary.json``; older ais_bench (and
    ais_infer) wrote ``sumary.json`` inside the output folder (their summary.py: ``os.path.join(output_prefix,
    "sumary.json")``), taken where the newer file is not there."""
    newer = Path(output) / f"{output_dirname}_summary.json"
    older = Path(output) / output_dirname / "sumary.json"
    return older if not newer.is_file() and older.is_file() else newer


def ais_bench_launcher(setting: str | Sequence[str] | None) -> list[str]:
    """The command that starts ais_bench: ``python -m ais_bench`` by default, or a configured one."""
    if not setting:
        return [sys.executable, "-m", "ais_bench"]
    return shlex.split(setting) if isinstance(setting, str) else [str(s) for s in setting]


def ais_bench_missing(launcher: Sequence[str]) -> str | None:
    """Why ``launcher`` cannot start ais_bench (its command or a wheel is missing), or None.

    ``python -m ais_bench`` needs two wheels: ais_bench and aclruntime, which ais_bench's inference module
    imports first (Ascend/tools, ``ais-bench_workload/tool/ais_bench/ais_bench/infer/interface.py``:
    ``import aclruntime``; the tool's Readme installs the aclruntime package and the ais_bench package).
    """
    shown = " ".join(launcher)
    if shutil.which(launcher[0]) is None and not Path(launcher[0]).is_file():
        return f"ais_bench not available ({shown}): {launcher[0]} not found"
    if list(launcher[1:3]) != ["-m", "ais_bench"]:
        return None  # a command of the user's own: it is found, the rest is up to it
    missing = missing_modules(launcher[0], AIS_BENCH_MODULES)
    if not missing:
        return None
    return (f"ais_bench not available ({shown}): {' and '.join(missing)} not installed there (python -m ais_bench "
            "needs the ais_bench wheel and the aclruntime wheel it imports, built for that Python and architecture)")


def missing_modules(python: str, names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` that ``python`` cannot find (this interpreter: without a subprocess)."""
    if python == sys.executable:
        return [n for n in names if importlib.util.find_spec(n) is None]
    return list(_missing_in_other_python(python, names))


@functools.lru_cache(maxsize=8)
def _missing_in_other_python(python: str, names: tuple[str, ...]) -> tuple[str, ...]:
    code = "import importlib.util as u, sys; print(' '.join(n for n in sys.argv[1:] if u.find_spec(n) is None))"
    try:
        proc = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return names
    return tuple(proc.stdout.split()) if proc.returncode == 0 else names


# The ais_bench flags the om backend sets itself or reads the result of: the model and its input, where and in which
# format the outputs go (it reads <output>/<output_dirname>/<stem>_<i>.bin), how they are split per file, the batch,
# the loop and warm-up it times and the device (Ascend/tools ais_bench/infer/__main__.py, get_args; argparse also takes
# a unique prefix of a flag, as --outf for --outfmt). The dynamic-batch gear (--dymBatch) it adds after these.
OWNED_AIS_BENCH_FLAGS = ("--model", "--input", "--output", "--output_dirname", "--outfmt", "--output_batchsize_axis",
                         "--batchsize", "--loop", "--warmup_count", "--device")
OWNED_AIS_BENCH_SHORT = {"-m": "--model", "-i": "--input", "-o": "--output", "-l": "--loop", "-d": "--device"}


def check_extra_args(extra_args: Sequence[str]) -> None:
    """Refuse ``deploy.om.extra_args`` that set a flag of :data:`OWNED_AIS_BENCH_FLAGS`: they come last on the
    command line, so argparse would take theirs (``--outfmt NPY`` writes ``<stem>_0.npy``, and the om backend then
    finds no outputs)."""
    for arg in (str(a) for a in extra_args):
        name = arg.split("=", 1)[0]
        owned = [OWNED_AIS_BENCH_SHORT[name]] if name in OWNED_AIS_BENCH_SHORT else \
            [f for f in OWNED_AIS_BENCH_FLAGS if name.startswith("--") and len(name) > 2 and f.startswith(name)]
        if owned:
            raise DeployError(f"deploy.om.extra_args sets {arg!r} ({owned[0]}), which the om backend sets itself "
                              f"(flags it owns: {', '.join(OWNED_AIS_BENCH_FLAGS)}): drop it")


def ais_bench_command(launcher: Sequence[str], om_path: str | Path, output: str | Path, output_dirname: str,
                      input_dir: str | Path | None = None, batch_size: int | None = None, loop: int | None = None,
                      device_id: int = 0, extra_args: Sequence[str] = (), warmup: int | None = None) -> list[str]:
    """The ais_bench command line; ``warmup``: ``--warmup_count`` (ais_bench's own default is 1 untimed run,
    ``__main__.py``, ``get_args``)."""
    check_extra_args(extra_args)
    cmd = [*launcher, "--model", str(om_path)]
    if input_dir is not None:
        cmd += ["--input", str(input_dir)]
    cmd += ["--output", str(output), "--output_dirname", output_dirname, "--outfmt", "BIN", "--device", str(device_id)]
    if batch_size is not None:
        cmd += ["--batchsize", str(int(batch_size))]
    if loop is not None:
        cmd += ["--loop", str(int(loop))]
    if warmup is not None:
        cmd += ["--warmup_count", str(int(warmup))]
    return cmd + [str(a) for a in extra_args]


# Newer ais_bench refuses a path with any other character (common/path_security_check.py:
# PATH_WHITE_LIST_REGEX = re.compile(r"[^_A-Za-z0-9/.-]"), applied to the absolute path).
PATH_REFUSED_CHARS = re.compile(r"[^_A-Za-z0-9/.-]")


def check_input_paths(paths: Sequence[str | Path]) -> None:
    """Every ais_bench release splits ``--input`` at commas (``args.input.split(',')``): a file or folder whose
    path holds one would be read as two. A one-line DeployError before the run instead."""
    for path in paths:
        if "," in str(path):
            raise DeployError(f"ais_bench splits --input at commas and {path} holds one: rename the image, or use "
                              "a run_dir without commas")


def _refused_paths(cmd: Sequence[str]) -> list[str]:
    """The absolute paths of ``--model``, ``--input`` (each of a comma list) and ``--output`` in ``cmd`` that newer
    ais_bench refuses for their characters (:data:`PATH_REFUSED_CHARS`)."""
    found = []
    for flag, value in zip(cmd, cmd[1:]):
        if flag in ("--model", "--input", "--output"):
            for path in value.split(",") if flag == "--input" else [value]:
                absolute = os.path.abspath(path)
                if PATH_REFUSED_CHARS.search(absolute):
                    found.append(absolute)
    return found


def run_ais_bench(cmd: Sequence[str], timeout: float | None = None) -> str:
    """Run ais_bench; its stdout on success, a DeployError with its reason (:func:`ais_bench_error`) otherwise,
    naming the paths a newer ais_bench refuses for their characters when there are any."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployError(f"ais_bench could not run ({exc}); command: {shlex.join(cmd)}") from exc
    if proc.returncode != 0:
        refused = _refused_paths(cmd)
        hint = (f" (newer ais_bench refuses paths with characters other than letters, digits and _/.-: "
                f"{refused[0]}{f' and {len(refused) - 1} more' if len(refused) > 1 else ''}; use a run_dir "
                "without them)") if refused else ""
        raise DeployError(f"ais_bench failed (exit {proc.returncode}): "
                          f"{ais_bench_error(proc.stdout, proc.stderr)}{hint}")
    return proc.stdout


def ais_bench_error(stdout: str, stderr: str) -> str:
    """The reason ais_bench failed: its last ``[ERROR]`` line, else the last line of stderr (or stdout).

    ais_bench logs to stdout (``infer/utils.py``: ``logging.basicConfig(stream=sys.stdout, format='[%(levelname)s]
    %(message)s')``) and then raises a bare ``RuntimeError()`` (``io_oprations.py``, ``utils.py``), so the last
    line of stderr is only "RuntimeError"; argparse errors (a bad flag value) are on stderr, exit status 2.
    """
    errors = [line[len("[ERROR]"):].strip() for line in stdout.splitlines() if line.startswith("[ERROR]")]
    errors = [e for e in errors if e]
    return errors[-1] if errors else last_line(stderr) or last_line(stdout) or "no output"


def last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def owner_only(path: str | Path) -> Path:
    """Take group write and all of others' permissions away from ``path`` (a file or folder the user owns)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & NOT_FOR_OTHERS:
        os.chmod(path, mode & ~NOT_FOR_OTHERS)
    return Path(path)


def owner_only_dir(path: str | Path) -> Path:
    """The folder ``path``, made with its missing parents as :data:`PRIVATE_DIR` (the umask can only take more
    away), or narrowed to it when it exists."""
    path = Path(path)
    for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    return owner_only(path)


def single_file_inputs(bins: Sequence[Path], scratch: Path) -> tuple[str, Path | None]:
    """``--input`` for one input file per inference, and the folder of hard links made for it (or None).

    ais_bench reads every ``*.bin`` / ``*.npy`` of an input folder (``infer/utils.py``,
    ``get_fileslist_from_dir``), so the files' own folder is used only when it holds exactly them: a folder
    with files left by an earlier run (more images preprocessed before) would be inferred in full. Otherwise
    the files go comma-separated (``io_oprations.py``, ``check_input_parameter``: a list of files), or, when
    that list is too long for one argument, as hard links (not symbolic ones, which newer ais_bench refuses)
    in ``scratch``.
    """
    folder = Path(bins[0]).parent
    present = {p.name for p in folder.iterdir() if p.name.endswith(AIS_BENCH_INPUT_SUFFIXES)}
    if present == {Path(b).name for b in bins}:
        return str(owner_only(folder)), None
    listed = ",".join(str(b) for b in bins)
    if len(listed) <= MAX_ARG_CHARS:
        return listed, None
    shutil.rmtree(scratch, ignore_errors=True)
    owner_only_dir(scratch)
    for path in bins:
        try:
            os.link(path, scratch / Path(path).name)  # the same file: its permissions too
        except OSError:  # another file system: a copy
            owner_only(shutil.copyfile(path, scratch / Path(path).name))
    return str(scratch), scratch


def write_batched_inputs(bin_paths: Sequence[Path], batch_size: int, out_dir: Path) -> list[list[int]]:
    """Concatenate groups of ``batch_size`` input files (the last group padded by repetition).

    Returns, per written ``batch_{j:05d}.bin``, the indices of the images it holds (padding excluded).
    """
    owner_only_dir(out_dir)
    groups = []
    for j, start in enumerate(range(0, len(bin_paths), batch_size)):
        members = list(range(start, min(start + batch_size, len(bin_paths))))
        padded = members + [members[-1]] * (batch_size - len(members))
        with open(out_dir / f"batch_{j:05d}.bin", "wb") as f:
            for i in padded:
                f.write(Path(bin_paths[i]).read_bytes())
        owner_only(out_dir / f"batch_{j:05d}.bin")
        groups.append(members)
    return groups


def read_output_files(out_dir: Path, basename: str, output_names: Sequence[str],
                      specs: Mapping[str, Mapping[str, Any]], batch_size: int = 1) -> dict[str, np.ndarray]:
    """Read ``{basename}_{i}.bin`` for each output into arrays [batch_size, *per-image shape]."""
    outputs = {}
    for i, name in enumerate(output_names):
        path = out_dir / f"{basename}_{i}.bin"
        if not path.is_file():
            raise DeployError(f"ais_bench output {path} is missing (expected one file per model output)")
        spec = specs[name]
        data = np.fromfile(path, dtype=np.dtype(spec["dtype"]))
        per_image = int(np.prod(spec["shape"])) if spec["shape"] else 1
        if data.size != batch_size * per_image:
            raise DeployError(f"{path}: {data.size} values of {spec['dtype']}, expected {batch_size}x"
                              f"{spec['shape']} (does the .om match the exported model?)")
        outputs[name] = data.reshape(batch_size, *spec["shape"])
    return outputs


def list_output_basenames(out_dir: Path, num_outputs: int) -> list[str]:
    """Input basenames that have output files in ``out_dir`` (other files skipped)."""
    pattern = re.compile(rf"^(.*)_({'|'.join(str(i) for i in range(num_outputs))})\.bin$")
    names = {m.group(1) for p in out_dir.glob("*.bin") if (m := pattern.match(p.name))}
    return sorted(names)


def parse_summary(output: str | Path, output_dirname: str, stdout: str = "") -> dict[str, float]:
    """NPU compute time (ms: mean, median, p99) and throughput from ``<output>/<output_dirname>_summary.json``,
    else from ais_bench's log lines."""
    stats: dict[str, float] = {}
    path = summary_path(output, output_dirname)
    if path.is_file():
        summary = json.loads(path.read_text())
        compute = summary.get("NPU_compute_time") or {}
        for key, out in (("mean", "mean_ms"), ("median", "p50_ms"), ("percentile(99%)", "p99_ms")):
            if key in compute:
                stats[out] = float(compute[key])
        if "throughput" in summary:
            stats["throughput"] = float(summary["throughput"])
    if "mean_ms" not in stats:
        m = re.search(r"NPU_compute_time \(ms\): .*?mean = ([\d.]+), median = ([\d.]+), percentile\(99%\) = ([\d.]+)",
                      stdout)
        if m:
            stats.update(mean_ms=float(m.group(1)), p50_ms=float(m.group(2)), p99_ms=float(m.group(3)))
    if "throughput" not in stats:
        m = re.search(r"throughput 1000\*batchsize.*?:\s*([\d.]+)", stdout)
        if m:
            stats["throughput"] = float(m.group(1))
    return stats
