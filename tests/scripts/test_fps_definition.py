"""The FPS the scripts report, next to the figure the Ascend ModelZoo SOLOv2 scripts would read from the same log.

ModelZoo's test/train_full_1p.sh, train_full_8p.sh and train_performance_{1p,8p}.sh take the max of the
``FPS: `` values of their training log (``grep -a 'FPS' | awk -F "FPS: " '{print $NF}' | awk <max>``); ours is
summary.json's ``fps``, the mean of the run after its first 5 steps. ``summarize`` (scripts/common.sh) prints ours
as "Final Performance images/sec", says which definition it is, and prints ModelZoo's reading of the log too.
Our log's ``FPS:`` values mean what theirs do (SOLOv2/mmcv/mmcv/runner/runner.py ``Runner.train`` and
runner/hooks/iter_timer.py ``IterTimerHook``): the running mean of images/s of all ranks over the current epoch's
steps from its 6th on, so on a steady run ModelZoo's reading of our log comes to our fps.
"""

from __future__ import annotations

import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The FPS pipeline of Ascend/ModelZoo-PyTorch PyTorch/contrib/cv/detection/SOLOv2/test/train_full_1p.sh (and
# train_full_8p.sh, train_performance_1p.sh, train_performance_8p.sh), run on the log as it is there.
MODELZOO_FPS = ("grep -a 'FPS' \"$1\" | awk -F \"FPS: \" '{print $NF}' | "
                "awk 'NR==1{max=$1;next}{max=max>$1?max:$1}END{print max}'")


def interval_line(iteration: int, per_epoch: int, ips: float, fps: float | None, extra: str = "") -> str:
    """An interval line as solo_npu.engine.writers.ConsoleWriter writes it: the interval's images/s, then the FPS:
    running mean of the epoch (none in the epoch's first 5 steps)."""
    epoch, inner = divmod(iteration - 1, per_epoch)
    marker = "" if fps is None else f" FPS: {fps:.3f}"
    return (f"2024-01-01 00:00:00 INFO solo_npu.engine.writers: epoch [{epoch + 1}/2] iter [{inner + 1}/{per_epoch}] "
            f"({iteration}/{2 * per_epoch}) loss: 1.2500 loss_cls: 0.5000 loss_mask: 0.7500 lr: 1.000e-02 "
            f"images/s: {ips:.2f} mem: 0MB (peak 0MB) data: 0.010s eta: 0:00:{iteration:02d}{marker}{extra}")


def summarize(tmp_path: Path, mode: str, fps: float, log_lines: list[str], log_interval: int = 20,
              world_size: int = 2) -> str:
    """``summarize MODE`` of scripts/common.sh on a run directory with this summary.json and log."""
    out = tmp_path / "output" / "0"
    run = out / "run"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "mode": "eval" if mode == "eval" else "train", "fps": fps, "segm_ap": 0.25, "final_loss": 1.25,
        "world_size": world_size, "batch_size": 2, "device": "npu", "iterations": 100}))
    (run / "config.yaml").write_text(f"train:\n  batch_size: 2\n  log_interval: {log_interval}\n"
                                     "amp:\n  enabled: true\n")
    log = out / "train_0.log"
    log.write_text("python3 train.py +experiment=1p\n" + "".join(line + "\n" for line in log_lines))
    script = (f'source "{ROOT / "scripts" / "common.sh"}"; OUTPUT_DIR="{out}"; RUN_DIR="{run}"; LOG_FILE="{log}"; '
              f"RUN_START=0; RUN_END=7; summarize {mode}")
    proc = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def modelzoo_reading(log: Path) -> float:
    proc = subprocess.run(["bash", "-c", MODELZOO_FPS, "modelzoo", str(log)], capture_output=True, text=True,
                          check=True)
    return float(proc.stdout)


def lines_of(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^([^:\n]+?) : (.+)$", stdout, re.M))


@pytest.mark.parametrize("mode", ["acc", "perf"])
def test_both_definitions_are_printed(tmp_path: Path, mode: str) -> None:
    speeds = [6.0, 11.5, 12.25, 9.75, 10.5]  # the 20-step means of the log
    running = [None, 11.0, 11.5, 10.25, 10.5]  # the epochs' running means (none at step 3: within the first 5)
    log_lines = [interval_line(3 + 20 * i, 50, ips, fps, " nonfinite: 1" if i == 3 else "")
                 for i, (ips, fps) in enumerate(zip(speeds, running))]
    log_lines.append("2024-01-01 00:00:09 INFO solo_npu.engine.hooks: training done: 100 iterations, 21.0 s, mean "
                     "10.12 images/s, FPS: 10.123")
    stdout = summarize(tmp_path, mode, 10.1234, log_lines)
    printed = lines_of(stdout)
    # Ours: summary.json's fps, the mean of the run after its first 5 steps (what ActualFPS and TrainingTime use).
    assert printed["Final Performance images/sec"] == "10.123"
    definition = printed["FPS definition"]
    assert "summary.json fps" in definition and "first 5 steps" in definition and "max" in definition, definition
    assert "running means of each epoch" in definition, definition
    # ModelZoo's: its own pipeline on this log, named with what this log's FPS: values are.
    log = tmp_path / "output" / "0" / "train_0.log"
    [(label, value)] = [(k, v) for k, v in printed.items() if k.startswith("ModelZoo reading of this log")]
    assert "running means of each epoch from its 6th step every 20 steps" in label, label
    assert float(value) == modelzoo_reading(log) == max(v for v in running if v is not None)
    case = (tmp_path / "output" / "0" / f"SOLOv2_bs2_2p_{mode}.log").read_text()
    assert "ActualFPS = 10.123\n" in case and "ModelZoo" not in case  # the ModelZoo keys, as they are


def steady_run(log: Path, step_times: list[float], per_epoch: int, log_interval: int, images_per_step: int) -> float:
    """The training hooks that time and log a run (LoggingHook with its ConsoleWriter, ThroughputHook) driven through
    steps of these times as the trainer reports them; rank 0's log lines go to ``log`` in train.log's format.
    Returns summary.json's fps (ThroughputHook.fps)."""
    from solo_npu.engine.events import EventStorage
    from solo_npu.engine.hooks import LoggingHook, ThroughputHook
    from solo_npu.engine.logs import _FORMAT
    from solo_npu.engine.writers import ConsoleWriter
    from solo_npu.runtime import resolve_device

    epochs = len(step_times) // per_epoch
    trainer = SimpleNamespace(epoch=0, inner_iter=0, iter=0, iters_per_epoch=per_epoch, max_epochs=epochs,
                              max_iters=len(step_times), images_per_step=images_per_step, nonfinite_total=0,
                              storage=EventStorage(), info=resolve_device("cpu"))
    hooks = [LoggingHook([ConsoleWriter()], log_interval), ThroughputHook()]
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    engine = logging.getLogger("solo_npu.engine")
    level = engine.level
    engine.addHandler(handler)
    engine.setLevel(logging.INFO)
    try:
        for hook in hooks:
            hook.trainer = trainer
            hook.before_train()
        for epoch in range(epochs):
            trainer.epoch, trainer.inner_iter = epoch, 0
            for k in range(per_epoch):
                trainer.storage.begin_step(trainer.iter + 1, epoch)
                trainer.storage.put_scalars({"loss": 1.0, "lr": 0.01})
                trainer.iter += 1
                trainer.inner_iter += 1
                step_time = step_times[epoch * per_epoch + k]
                trainer.storage.put_scalars({"data_time": 0.001, "step_time": step_time,
                                             "images_per_sec": images_per_step / step_time})
                for hook in hooks:
                    hook.after_step()
            for hook in hooks:
                hook.after_epoch()
        trainer.epoch += 1
        for hook in hooks:
            hook.after_train()
    finally:
        engine.removeHandler(handler)
        engine.setLevel(level)
        handler.close()
    return hooks[1].fps


def running_means(step_times: list[float], per_epoch: int, log_interval: int, images_per_step: int) -> list[float]:
    """The FPS: values ModelZoo's mmcv would log at our log lines: at each line, images of all ranks over the time of
    the epoch's steps from its 6th (IterTimerHook), as many images as steps timed (as at its epoch end; its lines
    inside an epoch count one step's images fewer, see scripts/common.sh)."""
    values = []
    for iteration in range(log_interval, len(step_times) + 1, log_interval):
        epoch, inner = divmod(iteration - 1, per_epoch)
        timed = step_times[epoch * per_epoch + 5:epoch * per_epoch + inner + 1]
        if timed:
            values.append(images_per_step * len(timed) / sum(timed))
    return values


def test_modelzoo_reading_of_a_steady_run_is_our_fps(tmp_path: Path) -> None:
    """A run of 3 epochs of 120 steps of 16 images (8 ranks x 2) at a steady 0.5 s a step with 4% noise after 5 slow
    first steps (first compiles): ModelZoo's max of our log's FPS: values is within 3% of summary.json's fps, and
    each value is the running mean computed from the step times alone."""
    rng = random.Random(7)
    per_epoch, interval, images = 120, 20, 16
    times = [3.0] * 5 + [0.5 * (1 + rng.uniform(-0.04, 0.04)) for _ in range(3 * per_epoch - 5)]
    log = tmp_path / "train_0.log"
    fps = steady_run(log, times, per_epoch, interval, images)
    text = log.read_text()
    logged = [float(v) for v in re.findall(r"\bFPS: (\S+)", text)]
    assert logged[:-1] == [round(v, 3) for v in running_means(times, per_epoch, interval, images)]
    assert text.splitlines()[-1].endswith(f"FPS: {fps:.3f}")  # the "training done" line
    reading = modelzoo_reading(log)
    assert reading == max(logged)
    assert abs(reading - fps) / fps < 0.03, (reading, fps)
    assert abs(fps - images / 0.5) / (images / 0.5) < 0.02  # the steady speed, the slow steps left out
    # The same run logged every 3 steps: an epoch's first line comes within its first 5 steps and has no FPS: marker
    # (ModelZoo's pipeline would read whatever followed it), and the reading is the same kind of figure.
    fine = tmp_path / "fine.log"
    steady_run(fine, times, per_epoch, 3, images)
    lines = fine.read_text().splitlines()
    assert [" FPS: " in line for line in lines[:3]] == [False, True, True]  # steps 3 (none timed), 6, 9
    assert all(len(re.findall(r"FPS", line)) == len(re.findall(r"FPS: \d", line)) for line in lines)
    assert abs(modelzoo_reading(fine) - fps) / fps < 0.03, (modelzoo_reading(fine), fps)


def test_no_fps_lines_and_evaluation(tmp_path: Path) -> None:
    printed = lines_of(summarize(tmp_path / "train", "perf", 3.5, ["2024-01-01 00:00:00 INFO started"]))
    assert printed["Final Performance images/sec"] == "3.500"
    assert [v for k, v in printed.items() if k.startswith("ModelZoo reading")] == ["None"]
    evaluated = summarize(tmp_path / "eval", "eval", 0.0, [])
    assert "Final Performance" not in evaluated and "ModelZoo reading" not in evaluated
    assert "FPS definition" not in evaluated
