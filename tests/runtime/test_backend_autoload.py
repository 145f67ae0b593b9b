"""A torch_npu that cannot load CANN's libraries must not end train.py or deploy.py at ``import torch``.

Since PyTorch 2.5, ``import torch`` imports every entry point of the group "torch.backends" unless
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (torch/__init__.py: ``_is_device_backend_autoload_enabled``,
``_import_device_backends``, which turns any ``Exception`` of the extension into ``RuntimeError("Failed to load
the backend extension: ...")``). torch_npu registers one (Ascend/pytorch setup.py: ``entry_points``
"torch.backends": ``torch_npu = torch_npu:_autoload``). The programs (train.py, deploy.py, ``python -m
solo_npu...``) switch the autoload off, so torch_npu is imported by the runtime only, for runtime.device npu or
auto: a CPU run never imports it.

The stand-in below is an installed distribution (package and dist-info) on PYTHONPATH: a torch_npu on a
machine whose CANN environment was not set up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# Feature detection: torch 2.1 (the floor) has no autoload, so there `import torch` never touches torch_npu.
AUTOLOADS = hasattr(torch, "_import_device_backends")

# Follows Ascend/pytorch torch_npu/__init__.py @ 2655b894 (the release line with the "torch.backends" entry point):
# it remembers TORCH_DEVICE_BACKEND_AUTOLOAD, sets it to 0 around its own `import torch`, imports torch_npu.npu,
# appends the set_env.sh advice and an "[ERROR] ... ERR00008 PTA resource not found" line
# (torch_npu/utils/_error_code.py, pta_error(ErrCode.NOT_FOUND)) to an ImportError naming libhccl.so and
# re-raises it; _autoload() only puts the remembered value back. (Releases before the entry point printed the
# error and called sys.exit(); tests/runtime/test_device.py covers that one.)
STAND_IN_INIT = '''\
import os
import time

_AUTOLOAD_AS_FOUND = os.getenv("TORCH_DEVICE_BACKEND_AUTOLOAD", "1")
os.environ["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"

import torch

try:
    from torch_npu import npu
except ImportError as err:
    if "libhccl.so" in str(err):
        stamp = time.strftime("%Y-%m-%d-%H:%M:%S", time.localtime())
        err.msg += (". Please check that the cann package is installed. Please run 'source set_env.sh' in the "
                    "CANN installation path."
                    f"\\n[ERROR] {stamp} (PID:{os.getpid()}, Device:-1, RankID:-1) ERR00008 PTA resource not found")
    raise


def _autoload():
    os.environ["TORCH_DEVICE_BACKEND_AUTOLOAD"] = _AUTOLOAD_AS_FOUND
'''
# torch_npu.npu loads the C extension torch_npu._C (through torch_npu.utils), which is linked against CANN's
# libhccl.so; without set_env.sh's LD_LIBRARY_PATH the dynamic loader fails with this message.
STAND_IN_NPU = 'raise ImportError("libhccl.so: cannot open shared object file: No such file or directory")\n'
ENTRY_POINTS = "[torch.backends]\ntorch_npu = torch_npu:_autoload\n"  # Ascend/pytorch setup.py, entry_points
# A tiny CPU run: 64-px synthetic images, one iteration, no evaluation.
TINY = ["+experiment=smoke", "data.root=data", "data.num_train=2", "data.num_val=1", "data.size=64",
        "data.img_scale=[64,64]", "train.max_iters=1", "train.eval_interval=0", "train.eval_at_end=false",
        "train.plots=false", "train.checkpoint_interval=0", "train.vis_images=0", "run_dir=run"]


@pytest.fixture(scope="module")
def broken_torch_npu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the stand-in distribution: torch_npu/ and torch_npu-2.5.1.dist-info/."""
    site = tmp_path_factory.mktemp("site")
    (site / "torch_npu" / "npu").mkdir(parents=True)
    (site / "torch_npu" / "__init__.py").write_text(STAND_IN_INIT)
    (site / "torch_npu" / "npu" / "__init__.py").write_text(STAND_IN_NPU)
    info = site / "torch_npu-2.5.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.5.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _run(site: Path, args: list[str], cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    # Python's -X importtime: one "import time: ... | <module>" line on stderr per import statement that runs a module.
    environ.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONPROFILEIMPORTTIME="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)


def _torch_npu_imports(proc: subprocess.CompletedProcess) -> int:
    """How many times the process tried to import the stand-in: each try runs (and fails in) torch_npu.npu."""
    modules = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return sum(name == "torch_npu.npu" for name in modules)


def _output(proc: subprocess.CompletedProcess) -> list[str]:
    """stdout and stderr without the import-time lines."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("import time:")]


def _tail(proc: subprocess.CompletedProcess) -> str:
    return "\n".join(_output(proc))[-3000:]


@pytest.mark.skipif(not AUTOLOADS, reason="this torch has no device-backend autoload (PyTorch 2.5 added it)")
def test_stand_in_ends_a_plain_import_torch(broken_torch_npu: Path) -> None:
    """What the programs guard against: with the autoload on, `import torch` itself fails on this torch_npu."""
    proc = _run(broken_torch_npu, ["-c", "import torch; print('imported')"])
    assert proc.returncode != 0 and "imported" not in proc.stdout
    assert "Failed to load the backend extension: torch_npu" in proc.stderr
    assert "libhccl.so" in proc.stderr


def test_cpu_run_trains_with_a_broken_torch_npu_installed(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=cpu"], cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 1
    # The CPU was asked for: neither data loading (pin_memory), the RNG states of the checkpoint nor the run summary
    # import torch_npu, so nothing is said about it.
    assert _torch_npu_imports(proc) == 0
    assert [line for line in _output(proc) if "torch_npu" in line or "NPU" in line] == []


def test_npu_run_stops_with_one_line_naming_the_cause(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=npu"], cwd=tmp_path)
    assert proc.returncode == 1, _tail(proc)
    assert "Traceback" not in proc.stderr and "Failed to load the backend extension" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[Error]")]
    assert len(errors) == 1 and "device=npu requested but torch_npu is installed but does not import" in errors[0]
    assert "set_env.sh" in errors[0]
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line and "torch_npu" in line]
    assert len(warnings) == 1 and "libhccl.so" in warnings[0] and "source set_env.sh" in warnings[0]
    # The run stops: the WARNING names no device it would use instead.
    assert warnings[0].endswith("NPU disabled") and "instead" not in warnings[0], warnings[0]
    assert _torch_npu_imports(proc) == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_auto_run_warns_that_the_npu_is_disabled_and_trains_on_the_cpu(broken_torch_npu: Path,
                                                                       tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=auto"], cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line and "torch_npu" in line]
    assert len(warnings) == 1, warnings
    assert "libhccl.so" in warnings[0] and "NPU disabled" in warnings[0] and "uses the CPU instead" in warnings[0]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "NPU disabled" in log and "device cpu" in log
    # resolve_device decides once; data loading, the RNG states and the summary do not try the import again.
    assert _torch_npu_imports(proc) == 1


def test_deploy_and_train_spawned_workers_get_past_import_torch(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "deploy.py"), "--help"])
    assert proc.returncode == 0 and "Failed to load the backend extension" not in proc.stderr, _tail(proc)
    # Two spawned workers (torch.multiprocessing, start method spawn) each import torch anew.
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=cpu", "launcher.nproc_per_node=2",
                                   "train.batch_size=1"], cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert _torch_npu_imports(proc) == 0 and not [line for line in _output(proc) if "torch_npu" in line]


def test_checkpoint_converter_runs_with_a_broken_torch_npu_installed(broken_torch_npu: Path, tmp_path: Path) -> None:
    """`python -m solo_npu.checkpoints` imports torch in solo_npu.checkpoints, before its __main__ runs."""
    from omegaconf import OmegaConf

    from solo_npu.models import build_model

    config = ROOT / "conf" / "model" / "solov2_tiny.yaml"
    torch.manual_seed(0)
    weights = build_model(OmegaConf.load(config), num_classes=3).state_dict()
    torch.save({"model": weights, "meta": {}}, tmp_path / "src.pth")
    proc = _run(broken_torch_npu, ["-m", "solo_npu.checkpoints", str(tmp_path / "src.pth"), str(tmp_path / "dst.pth"),
                                   "--model-config", str(config), "--num-classes", "3"])
    assert proc.returncode == 0, _tail(proc)
    converted = torch.load(tmp_path / "dst.pth", weights_only=True)["model"]
    assert converted.keys() == weights.keys() and all(torch.equal(converted[k], weights[k]) for k in weights)
    assert _torch_npu_imports(proc) == 0 and not [line for line in _output(proc) if "torch_npu" in line]


def test_machine_line_names_the_npu_for_benchmarks_only(broken_torch_npu: Path) -> None:
    """The runtime's machine line (deploy reports) does not import torch_npu; the benchmarks' line looks for the
    machine's NPUs, so there a broken torch_npu is one WARNING that names no device."""
    # Library use, not one of the programs: the autoload is switched off by hand, as docs/npu.md tells.
    runtime = _run(broken_torch_npu, ["-c", "from solo_npu.runtime import describe_machine; print(describe_machine())"],
                   TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    assert runtime.returncode == 0 and "torch" in runtime.stdout, _tail(runtime)
    assert _torch_npu_imports(runtime) == 0 and not [line for line in _output(runtime) if "torch_npu" in line]
    bench = _run(broken_torch_npu, ["-c", "import logging; logging.basicConfig(); from common import describe_machine;"
                                    " print(describe_machine())"], cwd=ROOT / "benchmarks",
                   TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    assert bench.returncode == 0, _tail(bench)
    warnings = [line for line in _output(bench) if "torch_npu" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING") and warnings[0].endswith("NPU disabled"), warnings


@pytest.mark.skipif(not AUTOLOADS, reason="this torch has no device-backend autoload (PyTorch 2.5 added it)")
def test_autoload_the_user_asked_for_is_kept(broken_torch_npu: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "deploy.py"), "--help"], TORCH_DEVICE_BACKEND_AUTOLOAD="1")
    assert proc.returncode != 0 and "Failed to load the backend extension: torch_npu" in proc.stderr
