"""The ModelZoo-style scripts on a synthetic COCO dataset, shrunk with pass-through overrides."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHRINK = ["model=solov2_tiny", "data.img_scale=[160,128]", "data.num_workers=0", "data.max_instances=8",
          "train.plots=false", "train.log_interval=2", "train.eval_batch_size=4"]


def run_script(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def summary_lines(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(Final Performance images/sec|Final Train Accuracy|E2E Training Duration sec) : (\S+)$",
                           stdout, re.M))


def case_log(out_dir: Path) -> dict[str, str]:
    logs = list(out_dir.glob("SOLOv2_for_PyTorch_*.log"))
    assert len(logs) == 1, logs
    return dict(line.split(" = ", 1) for line in logs[0].read_text().splitlines())


@pytest.fixture(scope="module")
def full_1p(synthetic_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("full_1p")
    proc = run_script("train_full_1p.sh", cwd, f"--data_path={synthetic_coco}", "--epochs=1", "--batch_size=2",
                      "--device=cpu", *SHRINK)
    return cwd, proc


def test_missing_data_path_fails(tmp_path: Path) -> None:
    proc = run_script("train_full_1p.sh", tmp_path, "--device_id=0")
    assert proc.returncode == 1 and '[Error] para "data_path" must be config' in proc.stdout


def test_data_path_must_be_coco_layout(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    proc = run_script("train_performance_1p.sh", tmp_path, f"--data_path={tmp_path}")
    assert proc.returncode == 1 and "is not a COCO layout" in proc.stdout and "instances_train2017.json" in proc.stdout


def test_eval_needs_a_checkpoint(synthetic_coco: Path, tmp_path: Path) -> None:
    proc = run_script("train_eval_1p.sh", tmp_path, f"--data_path={synthetic_coco}")
    assert proc.returncode == 1 and '[Error] para "checkpoint" must be config' in proc.stdout


def test_train_full_1p(full_1p: tuple[Path, subprocess.CompletedProcess]) -> None:
    cwd, proc = full_1p
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = summary_lines(proc.stdout)
    assert float(lines["Final Performance images/sec"]) > 0
    assert 0.0 <= float(lines["Final Train Accuracy"]) <= 1.0 and int(lines["E2E Training Duration sec"]) >= 0
    log = (cwd / "output" / "0" / "train_0.log").read_text()
    assert "FPS: " in log and "+experiment=1p" in log
    case = case_log(cwd / "output" / "0")
    assert case["CaseName"] == "SOLOv2_for_PyTorch_bs2_1p_acc" and case["RankSize"] == "1"
    assert case["BatchSize"] == "2" and case["DeviceType"].startswith("cpu")
    assert case["ActualFPS"] == lines["Final Performance images/sec"]
    assert case["TrainAccuracy"] == lines["Final Train Accuracy"]
    assert float(case["ActualLoss"]) > 0 and float(case["TrainingTime"]) > 0


def test_train_eval_1p_reproduces_accuracy(full_1p: tuple[Path, subprocess.CompletedProcess], synthetic_coco: Path,
                                           tmp_path: Path) -> None:
    cwd, proc = full_1p
    ckpt = cwd / "output" / "0" / "run" / "checkpoints" / "last.pth"
    out = run_script("train_eval_1p.sh", tmp_path, f"--data_path={synthetic_coco}", f"--checkpoint={ckpt}",
                     "--device=cpu", *SHRINK)
    assert out.returncode == 0, out.stdout[-2000:]
    assert summary_lines(out.stdout)["Final Train Accuracy"] == summary_lines(proc.stdout)["Final Train Accuracy"]
    assert case_log(tmp_path / "output" / "0")["CaseName"].endswith("_1p_eval")


def test_train_finetune_1p(full_1p: tuple[Path, subprocess.CompletedProcess], synthetic_coco: Path,
                           tmp_path: Path) -> None:
    cwd, _ = full_1p
    ckpt = cwd / "output" / "0" / "run" / "checkpoints" / "last.pth"
    out = run_script("train_finetune_1p.sh", tmp_path, f"--data_path={synthetic_coco}", f"--checkpoint={ckpt}",
                     "--epochs=1", "--device_id=3", "--device=cpu", *SHRINK)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "Final Train Accuracy" in summary_lines(out.stdout)
    assert "initial weights from" in (tmp_path / "output" / "3" / "train_3.log").read_text()


def test_train_performance_1p(synthetic_coco: Path, tmp_path: Path) -> None:
    out = run_script("train_performance_1p.sh", tmp_path, f"--data_path={synthetic_coco}", "--device=cpu",
                     "train.max_iters=4", *SHRINK)
    assert out.returncode == 0, out.stdout[-2000:]
    lines = summary_lines(out.stdout)
    assert float(lines["Final Performance images/sec"]) > 0 and "Final Train Accuracy" not in lines
    assert case_log(tmp_path / "output" / "0")["CaseName"] == "SOLOv2_for_PyTorch_bs2_1p_perf"


def test_train_full_8p_as_two_cpu_processes(synthetic_coco: Path, tmp_path: Path) -> None:
    out = run_script("train_full_8p.sh", tmp_path, f"--data_path={synthetic_coco}", "--epochs=1", "--batch_size=2",
                     "--device=cpu", "launcher.nproc_per_node=2", "optim.fused=false", *SHRINK)
    assert out.returncode == 0, out.stdout[-3000:]
    case = case_log(tmp_path / "output" / "0")
    assert case["RankSize"] == "2" and case["BatchSize"] == "4" and case["CaseName"] == "SOLOv2_for_PyTorch_bs4_2p_acc"
    assert 0.0 <= float(summary_lines(out.stdout)["Final Train Accuracy"]) <= 1.0
