"""The FPS the scripts report, next to the figure the Ascend ModelZoo SOLOv2 scripts would read from the same log.

ModelZoo's test/train_full_1p.sh, train_full_8p.sh and train_performance_{1p,8p}.sh take the max of the
``FPS: `` values of their training log (``grep -a 'FPS' | awk -F "FPS: " '{print $NF}' | awk <max>``); ours is
summary.json's ``fps``, the mean of the run after its first 5 steps. ``summarize`` (scripts/common.sh) prints ours
as "Final Performance images/sec", says which definition it is, and prints ModelZoo's reading of the log too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The FPS pipeline of Ascend/ModelZoo-PyTorch PyTorch/contrib/cv/detection/SOLOv2/test/train_full_1p.sh (and
# train_full_8p.sh, train_performance_1p.sh, train_performance_8p.sh), run on the log as it is there.
MODELZOO_FPS = ("grep -a 'FPS' \"$1\" | awk -F \"FPS: \" '{print $NF}' | "
                "awk 'NR==1{max=$1;next}{max=max>$1?max:$1}END{print max}'")


def interval_line(iteration: int, per_epoch: int, ips: float, extra: str = "") -> str:
    """An interval line as solo_npu.engine.writers.ConsoleWriter writes it (its images/s, then FPS: the same)."""
    epoch, inner = divmod(iteration - 1, per_epoch)
    return (f"2024-01-01 00:00:00 INFO solo_npu.engine.writers: epoch [{epoch + 1}/2] iter [{inner + 1}/{per_epoch}] "
            f"({iteration}/{2 * per_epoch}) loss: 1.2500 loss_cls: 0.5000 loss_mask: 0.7500 lr: 1.000e-02 "
            f"images/s: {ips:.2f} mem: 0MB (peak 0MB) data: 0.010s eta: 0:00:{iteration:02d} FPS: {ips:.3f}{extra}")


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
    speeds = [6.0, 11.5, 12.25, 9.75, 10.5]  # the 20-step means of the log; the run's mean is another number
    log_lines = [interval_line(20 * (i + 1), 50, ips, " nonfinite: 1" if i == 3 else "")
                 for i, ips in enumerate(speeds)]
    log_lines.append("2024-01-01 00:00:09 INFO solo_npu.engine.hooks: training done: 100 iterations, 21.0 s, mean "
                     "10.12 images/s, FPS: 10.123")
    stdout = summarize(tmp_path, mode, 10.1234, log_lines)
    printed = lines_of(stdout)
    # Ours: summary.json's fps, the mean of the run after its first 5 steps (what ActualFPS and TrainingTime use).
    assert printed["Final Performance images/sec"] == "10.123"
    definition = printed["FPS definition"]
    assert "summary.json fps" in definition and "first 5 steps" in definition and "max" in definition, definition
    # ModelZoo's: its own pipeline on this log, named with what this log's FPS: values are (20-step means).
    log = tmp_path / "output" / "0" / "train_0.log"
    [(label, value)] = [(k, v) for k, v in printed.items() if k.startswith("ModelZoo reading of this log")]
    assert "20-step means" in label, label
    assert float(value) == modelzoo_reading(log) == max(speeds)
    case = (tmp_path / "output" / "0" / f"SOLOv2_bs4_2p_{mode}.log").read_text()
    assert "ActualFPS = 10.123\n" in case and "ModelZoo" not in case  # the ModelZoo keys, as they are


def test_no_fps_lines_and_evaluation(tmp_path: Path) -> None:
    printed = lines_of(summarize(tmp_path / "train", "perf", 3.5, ["2024-01-01 00:00:00 INFO started"]))
    assert printed["Final Performance images/sec"] == "3.500"
    assert [v for k, v in printed.items() if k.startswith("ModelZoo reading")] == ["None"]
    evaluated = summarize(tmp_path / "eval", "eval", 0.0, [])
    assert "Final Performance" not in evaluated and "ModelZoo reading" not in evaluated
    assert "FPS definition" not in evaluated
