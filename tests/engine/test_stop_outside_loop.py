"""Ctrl-C while the spawned workers of ``python train.py launcher.nproc_per_node=N`` are not all in their training
loop (importing, in the process-group rendezvous, setting up, or already waiting in the first step's all-reduce
for a peer that is not): no step can be taken, so the run ends at once, exit 130 with one line, no traceback,
no worker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The parent of the workers, in a session of its own (so that the test can signal its process group as a
# terminal does); it prints the workers' pids once torch.multiprocessing has started them.
_PARENT = """
import sys
from pathlib import Path

import torch.multiprocessing

import test_stop_outside_loop as t
from solo_npu.engine.launch import launch

start = torch.multiprocessing.start_processes

def started(*args, **kwargs):
    context = start(*args, **kwargs)
    print("pids", *[p.pid for p in context.processes], flush=True)
    return context

torch.multiprocessing.start_processes = started
run_dir = Path(sys.argv[2])
cfg = {"launcher": {"nproc_per_node": 2, "timeout_min": 1}, "runtime": {"device": "cpu"}, "wait_s": 60.0}
if sys.argv[1] == "wait_after_set_up":
    cfg["arrival"] = t.SlowToImport(str(run_dir))
try:
    launch(getattr(t, sys.argv[1]), cfg, run_dir)
except KeyboardInterrupt as exc:
    print(type(exc).__name__, exc, flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


def _arrive(run_dir: str) -> str:
    """Unpickled in each worker before it runs any of the launcher's code: the first to get here goes on (to the
    rendezvous), a second one waits here, as a worker slow to import does, until ``run_dir/go`` appears."""
    path = Path(run_dir)
    try:
        os.close(os.open(path / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return run_dir
    except FileExistsError:
        pass
    (path / "importing").touch()
    deadline = time.monotonic() + 60
    while not (path / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return run_dir


class SlowToImport:
    """A config entry whose unpickling is :func:`_arrive`."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __reduce__(self):
        return _arrive, (self.run_dir,)


def _wait_for_file(path: Path, deadline: float) -> None:
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def one_rank_in_its_loop(cfg: dict, run_dir: Path, info) -> None:
    """Rank 1 takes SIGINT over as a training loop does and waits in the first step's all-reduce; rank 0 is still
    setting up (a dataset slow to load) until ``run_dir/go`` appears."""
    import torch
    import torch.distributed as dist

    from solo_npu.engine.interrupts import Interrupts

    rank = dist.get_rank()
    (run_dir / f"ready{rank}").touch()
    if rank == 0:
        _wait_for_file(run_dir / "go", time.monotonic() + cfg["wait_s"])
    loop = Interrupts()
    loop.install(distributed=True)
    try:
        dist.all_reduce(torch.ones(1))
    finally:
        loop.restore()
    (run_dir / f"stepped{rank}").touch()


def wait_after_set_up(cfg: dict, run_dir: Path, info) -> None:
    """Both ranks set up; never reached in the rendezvous test."""
    (run_dir / "job").touch()


def _start_parent(job: str, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), *sys.path])}
    # SIGINT at its default: a test run started in the background by a non-interactive shell has it ignored
    return subprocess.Popen([sys.executable, "-c", _PARENT, job, str(run_dir)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop(proc: subprocess.Popen, run_dir: Path, markers: list[str], settle_s: float, to: str):
    """Wait for the workers' pids and ``markers``, let ``settle_s`` pass, send SIGINT (``to`` the process group as
    a terminal's Ctrl-C, the parent alone, or the first worker alone); returns stdout, stderr, the seconds the run
    took to end after it, and the workers' pids."""
    try:
        first = proc.stdout.readline().split()
        assert first[:1] == ["pids"], (first, proc.stderr.read()[-3000:] if proc.poll() is not None else "")
        pids = [int(p) for p in first[1:]]
        deadline = time.monotonic() + 120
        while not all((run_dir / m).exists() for m in markers):
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not get there"
            time.sleep(0.02)
        time.sleep(settle_s)
        t0 = time.monotonic()
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid if to == "parent" else pids[0], signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        (run_dir / "go").touch()  # nothing may be left waiting for it
    return out, err, took, pids


def _gone(pids: list[int], within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("to", ["group", "parent", "worker"])
def test_ctrl_c_while_one_rank_waits_in_the_first_step_for_a_peer_still_setting_up(tmp_path: Path, to: str) -> None:
    """Rank 1 waits in the first step's all-reduce for rank 0, which still sets up. A stop request cannot travel
    with a step that never comes: rank 0 stopped where it was and rank 1 was left in the all-reduce (gloo ended
    it with "Connection closed by peer", a traceback and exit 1; NCCL and HCCL wait for the group's timeout).
    A terminal's Ctrl-C, ``kill -INT`` of the parent, and ``kill -INT`` of rank 0 alone all end the run."""
    proc = _start_parent("one_rank_in_its_loop", tmp_path)
    out, err, took, pids = _stop(proc, tmp_path, ["ready0", "ready1"], 0.5, to)
    assert proc.returncode == 130 and "KeyboardInterrupt SIGINT received" in out, (proc.returncode, out, err[-3000:])
    assert "Traceback" not in err and "saving last.pth" not in err, err[-3000:]
    assert took < 10  # rank 0 would have set up for 60 s
    assert not list(tmp_path.glob("stepped*"))
    assert _gone(pids), "a worker is still running"


def test_terminal_ctrl_c_while_a_worker_imports_and_its_peer_waits_in_the_rendezvous(tmp_path: Path) -> None:
    """One worker still imports (here: unpickles its arguments) while the other waits for it in the process
    group's rendezvous. A terminal's Ctrl-C reached the importing worker before it could take SIGINT over: a
    KeyboardInterrupt traceback from the middle of its imports."""
    proc = _start_parent("wait_after_set_up", tmp_path)
    out, err, took, pids = _stop(proc, tmp_path, ["importing"], 1.0, "group")
    assert proc.returncode == 130 and "KeyboardInterrupt SIGINT received" in out, (proc.returncode, out, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert took < 10
    assert not (tmp_path / "job").exists()
    assert _gone(pids), "a worker is still running"
