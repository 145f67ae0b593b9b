"""Ctrl-C during the final evaluation, after training ended: the first is honoured after the run's end (the
final evaluation, last.pth and summary.json are done), Ctrl-C again stops at once and summary.json, written
when training ended, says that the final evaluation was interrupted.

The validation images become named pipes once the run has set up (the dataset checks at set-up that they are
files): the final evaluation's opening one waits until the test opens it for writing (then it reads as an
unreadable image), so the test decides when the evaluation can go on.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from solo_npu.checkpoints import load_checkpoint
from solo_npu.engine.interrupts import SAME_CTRL_C_S

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NOTICE = "SIGINT received after training"


def _val_root(synthetic_coco: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of the session's dataset and its validation images."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_coco, root)
    return root, sorted((root / "val2017").iterdir())


def _pipes_once_set_up(images: list[Path], run_dir: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Once the run has logged its training set-up (datasets, model, trainer: before its first step), replace the
    validation images by named pipes."""
    deadline = time.monotonic() + timeout_s
    log = run_dir / "train.log"
    while not (log.is_file() and "training images" in log.read_text()):
        assert proc.poll() is None, ("the run ended", proc.returncode, proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline, "the run did not set up"
        time.sleep(0.005)
    for path in images:
        pipe = path.with_name(path.name + ".fifo")
        os.mkfifo(pipe)
        os.replace(pipe, path)


def _start(root: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    """train.py in a session of its own, stopping after 2 iterations (mid-epoch: the final evaluation runs after
    the training loop), last.pth saved at iteration 2."""
    cmd = [sys.executable, str(ROOT / "train.py"), "+experiment=smoke", f"data.root={root}", "data.generate=false",
           "train.max_iters=2", "train.eval_interval=0", "train.eval_at_end=true", "train.plots=false",
           "train.checkpoint_interval_iters=2", f"run_dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # SIGINT at its default: a test run started in the background by a non-interactive shell has it ignored
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _let_one_image_through(fifos: list[Path], proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Wait until the evaluation opens one of the named pipes and let that one through (as an unreadable
    image); the evaluation cannot end while another one waits."""
    deadline = time.monotonic() + timeout_s
    while True:
        for path in fifos:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it (yet)
                    raise
                continue
            os.close(fd)
            return
        assert proc.poll() is None, ("the run ended", proc.returncode, proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline, "the final evaluation did not start"
        time.sleep(0.01)


def _let_all_through(fifos: list[Path], proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Let every image through that the evaluation opens until the run ends."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        for path in fifos:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _check_interrupted(run_dir: Path, err: str) -> None:
    """summary.json of a run whose training finished and whose final evaluation was stopped."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["iterations"] == 2, summary
    assert summary["final_evaluation"] == "interrupted" and summary["segm_ap"] is None, summary
    assert load_checkpoint(run_dir / "checkpoints" / "last.pth")["iteration"] == 2
    assert err.count(NOTICE) == 1 and err.count("[Error] stopped by Ctrl-C") == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_spawned_run_ends_normally_after_a_ctrl_c_during_the_final_evaluation(synthetic_coco: Path,
                                                                             tmp_path: Path) -> None:
    """A terminal's Ctrl-C during the final evaluation ended the ranks at once, and rank 0 had not written
    summary.json. It is held now, with one line saying so: the evaluation, last.pth and summary.json are done,
    and train.py exits 0."""
    root, fifos = _val_root(synthetic_coco, tmp_path)
    run_dir = tmp_path / "run"
    proc = _start(root, run_dir, "launcher.nproc_per_node=2")
    try:
        _pipes_once_set_up(fifos, run_dir, proc)
        _let_one_image_through(fifos, proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(SAME_CTRL_C_S + 0.3)
        assert proc.poll() is None, ("the Ctrl-C ended the run", proc.returncode, proc.stderr.read()[-3000:])
        _let_all_through(fifos, proc)
        _, err = proc.communicate(timeout=60)
    finally:
        _kill(proc)
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["iterations"] == 2 and "final_evaluation" not in summary, summary
    assert summary["segm_ap"] is not None and summary["ranks_in_sync"] is True, summary
    assert err.count(NOTICE) == 1 and "[Error]" not in err and "Traceback" not in err, err[-3000:]


def test_spawned_run_holds_ctrl_c_during_the_final_evaluation_and_stops_on_the_second(synthetic_coco: Path,
                                                                                      tmp_path: Path) -> None:
    """A terminal's Ctrl-C (the parent and both ranks) during the final evaluation is held: the evaluation goes
    on. ``kill -INT`` of train.py later is Ctrl-C again: the ranks end at once, and summary.json, which rank 0
    could not write before, holds the training's results and says the final evaluation was interrupted."""
    root, fifos = _val_root(synthetic_coco, tmp_path)
    run_dir = tmp_path / "run"
    proc = _start(root, run_dir, "launcher.nproc_per_node=2")
    try:
        _pipes_once_set_up(fifos, run_dir, proc)
        _let_one_image_through(fifos, proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(SAME_CTRL_C_S + 0.3)
        assert proc.poll() is None, ("the first Ctrl-C ended the run", proc.returncode, proc.stderr.read()[-3000:])
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        _kill(proc)
    assert proc.returncode == 130 and took < 10, (proc.returncode, took, err[-3000:])
    _check_interrupted(run_dir, err)


def test_one_process_run_holds_ctrl_c_during_the_final_evaluation_and_stops_on_the_second(synthetic_coco: Path,
                                                                                          tmp_path: Path) -> None:
    """One process: the first Ctrl-C stopped the evaluation where it was and summary.json said "stopped", as
    for a run stopped in the middle of training. Now the evaluation goes on (it opens another image), and
    Ctrl-C again stops it with the training's results in summary.json."""
    root, fifos = _val_root(synthetic_coco, tmp_path)
    run_dir = tmp_path / "run"
    proc = _start(root, run_dir)
    try:
        _pipes_once_set_up(fifos, run_dir, proc)
        _let_one_image_through(fifos, proc)
        first = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _let_one_image_through(fifos, proc)  # held: the evaluation goes on
        time.sleep(max(0.0, first + SAME_CTRL_C_S + 0.3 - time.monotonic()))
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        _kill(proc)
    assert proc.returncode == 130 and took < 10, (proc.returncode, took, err[-3000:])
    _check_interrupted(run_dir, err)
