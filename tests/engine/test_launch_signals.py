"""SIGINT to the parent of spawned workers (``python train.py launcher.nproc_per_node=N``): each worker gets one
SIGINT per Ctrl-C, whether the terminal's Ctrl-C reached it directly or only the parent got one, and a SIGINT
while the workers still start ends the run at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from solo_npu.engine.interrupts import SAME_CTRL_C_S, Interrupts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The parent of the workers, in a session of its own (so that the test can signal its process group as a
# terminal does); "started" once torch.multiprocessing has started the workers.
_PARENT = """
import sys
from pathlib import Path

import torch.multiprocessing

import test_launch_signals as t
from solo_npu.engine.launch import launch

start = torch.multiprocessing.start_processes

def started(*args, **kwargs):
    context = start(*args, **kwargs)
    print("started", flush=True)
    return context

torch.multiprocessing.start_processes = started
try:
    launch(t._count_signals, {"launcher": {"nproc_per_node": 2, "timeout_min": 1}, "runtime": {"device": "cpu"},
                              "wait_s": float(sys.argv[2])}, Path(sys.argv[1]))
except KeyboardInterrupt as exc:
    print(type(exc).__name__, exc, flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


class _Counting(Interrupts):
    """The training loop's signal handling (it takes SIGINT and SIGTERM over), counting what arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[str] = []

    def _handle(self, signum, frame) -> None:
        self.got.append(signal.Signals(signum).name)


def _count_signals(cfg: dict, run_dir: Path, info) -> None:
    """Hold the signals as a training loop does until ``run_dir/done`` appears (at most ``wait_s``), then write
    the names of the signals that arrived."""
    import torch.distributed as dist

    rank = dist.get_rank()
    counting = _Counting()
    counting.install(distributed=True)
    try:
        (run_dir / f"ready{rank}").touch()
        deadline = time.monotonic() + cfg["wait_s"]
        while not (run_dir / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        counting.restore()
    (run_dir / f"signals{rank}.json").write_text(json.dumps(counting.got))


def _start_parent(run_dir: Path, wait_s: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), *sys.path])}
    # SIGINT at its default: a test run started in the background by a non-interactive shell has it ignored
    return subprocess.Popen([sys.executable, "-c", _PARENT, str(run_dir), str(wait_s)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(paths: list[Path], proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.02)


def test_each_worker_gets_one_sigint_per_ctrl_c_from_the_terminal_or_the_parent(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the parent and the workers: passed on by the parent as well, it would reach
    them twice, and a second one that arrives after the worker stopped interrupts the stop. ``kill -INT`` of the
    parent reaches the parent alone: it must reach the workers too."""
    proc = _start_parent(tmp_path, wait_s=60)
    try:
        _wait_for([tmp_path / "ready0", tmp_path / "ready1"], proc)
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C
        time.sleep(SAME_CTRL_C_S + 0.3)
        os.kill(proc.pid, signal.SIGINT)  # the parent alone, later than the same Ctrl-C could be
        time.sleep(0.5)
        (tmp_path / "done").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and "finished" in out, (proc.returncode, out, err[-3000:])
    for rank in (0, 1):
        assert json.loads((tmp_path / f"signals{rank}.json").read_text()) == ["SIGINT", "SIGINT"], rank


def test_sigint_to_the_parent_while_the_workers_start_ends_the_run_as_a_ctrl_c(tmp_path: Path) -> None:
    """Still importing, a worker has no step to finish: a SIGINT would print a KeyboardInterrupt traceback from
    its imports, and a rank stopped at another point of its start than its peers leaves them waiting in the
    rendezvous. The run ends at once, reported as stopped by Ctrl-C."""
    proc = _start_parent(tmp_path, wait_s=10)
    try:
        assert proc.stdout.readline().strip() == "started"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "KeyboardInterrupt SIGINT received" in out, (proc.returncode, out, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert not list(tmp_path.glob("ready*"))  # no job ran
    assert time.monotonic() - t0 < 8  # the job would have held the run for 10 s
