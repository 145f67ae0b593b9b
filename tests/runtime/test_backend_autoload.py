"""A torch_npu that cannot load CANN's libraries must not end train.py or deploy.py at ``import torch``.

Since PyTorch 2.5, ``import torch`` imports every entry point of the group "torch.backends" unless
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (torch/__init__.py: ``_is_device_backend_autoload_enabled``,
``_import_device_backends``, which turns any ``Exception`` of the extension into ``RuntimeError("Failed to load
the backend extension: ...")``). torch_npu registers one (Ascend/pytorch setup.py: ``entry_points``
"torch.backends": ``torch_npu = torch_npu:_autoload``). The programs switch the autoload off, so torch_npu is
imported by the runtime only, for runtime.device npu or auto.

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
    environ.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(not AUTOLOADS, reason="this torch has no device-backend autoload (PyTorch 2.5 added it)")
def test_stand_in_ends_a_plain_import_torch(broken_torch_npu: Path) -> None:
    """What the programs guard against: with the autoload on, `import torch` itself fails on this torch_npu."""
    proc = _run(broken_torch_npu, ["-c", "import torch; print('imported')"])
    assert proc.returncode != 0 and "imported" not in proc.stdout
    assert "Failed to load the backend extension: torch_npu" in proc.stderr
    assert "libhccl.so" in proc.stderr


def test_cpu_run_trains_with_a_broken_torch_npu_installed(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 1
    # The runtime still looks for accelerators (data loading, RNG states, the machine summary): one WARNING at most.
    mentions = [line for line in (proc.stdout + proc.stderr).splitlines() if "torch_npu" in line]
    assert len(mentions) <= 1 and all("WARNING" in line and "NPU disabled" in line for line in mentions), mentions


def test_npu_run_stops_with_one_line_naming_the_cause(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=npu"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Failed to load the backend extension" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[Error]")]
    assert len(errors) == 1 and "device=npu requested but torch_npu is installed but does not import" in errors[0]
    assert "set_env.sh" in errors[0]
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line and "torch_npu" in line]
    assert len(warnings) == 1 and "libhccl.so" in warnings[0] and "source set_env.sh" in warnings[0]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_auto_run_warns_that_the_npu_is_disabled_and_trains_on_the_cpu(broken_torch_npu: Path,
                                                                       tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=auto"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line and "torch_npu" in line]
    assert len(warnings) == 1, warnings
    assert "libhccl.so" in warnings[0] and "NPU disabled" in warnings[0] and "uses the CPU instead" in warnings[0]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "NPU disabled" in log and "device cpu" in log


def test_deploy_and_train_spawned_workers_get_past_import_torch(broken_torch_npu: Path, tmp_path: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "deploy.py"), "--help"])
    assert proc.returncode == 0 and "Failed to load the backend extension" not in proc.stderr, proc.stderr[-2000:]
    # Two spawned workers (torch.multiprocessing, start method spawn) each import torch anew.
    proc = _run(broken_torch_npu, [str(ROOT / "train.py"), *TINY, "runtime.device=cpu", "launcher.nproc_per_node=2",
                                   "train.batch_size=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.skipif(not AUTOLOADS, reason="this torch has no device-backend autoload (PyTorch 2.5 added it)")
def test_autoload_the_user_asked_for_is_kept(broken_torch_npu: Path) -> None:
    proc = _run(broken_torch_npu, [str(ROOT / "deploy.py"), "--help"], TORCH_DEVICE_BACKEND_AUTOLOAD="1")
    assert proc.returncode != 0 and "Failed to load the backend extension: torch_npu" in proc.stderr
