"""Evaluating after a fine-tuning: train_eval_1p.sh without --checkpoint evaluates the fine-tuned weights and says
which file it evaluates, with the epoch and iteration it was saved at; train.py with mode=eval and no checkpoint
stops with one line. Real (tiny) train.py runs on the synthetic COCO set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHRINK = ["--device=cpu", "model=solov2_tiny", "data.img_scale=[160,128]", "data.num_workers=0",
          "data.max_instances=8", "train.plots=false", "train.log_interval=1", "train.eval_batch_size=4"]


def script(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_DEVICE_ID", "OUTPUT_DIR")}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "test" / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_eval_after_finetune_evaluates_the_fine_tuned_checkpoint(synthetic_coco: Path, tmp_path: Path) -> None:
    """train_full_1p.sh (2 iterations), train_finetune_1p.sh from it (3 iterations), then train_eval_1p.sh with no
    --checkpoint: the fine-tuned last.pth is evaluated, as the ModelZoo SOLOv2 train_eval_1p.sh evaluates the
    work_dir's latest.pth that its train_finetune_1p.sh has just written (Ascend/ModelZoo-PyTorch,
    PyTorch/contrib/cv/detection/SOLOv2/tools/train.py fine-tunes into the config's work_dir). Before, the full
    training run's checkpoint was evaluated and the fine-tuned one passed over without a word."""
    data = f"--data_path={synthetic_coco}"
    script("train_full_1p.sh", tmp_path, data, "--epochs=1", "train.max_iters=2", *SHRINK)
    script("train_finetune_1p.sh", tmp_path, data, "--epochs=1", "train.max_iters=3", *SHRINK)
    proc = script("train_eval_1p.sh", tmp_path, data, *SHRINK)
    out = tmp_path / "output"
    runs = {}
    for d in out.iterdir():
        config = (d / "run" / "config.yaml").read_text()
        runs[next(line.split(": ")[1] for line in config.splitlines() if line.startswith("experiment_name: "))] = d
    assert set(runs) == {"1p", "finetune", "eval"} and runs["eval"] == out / "0"
    full, tuned = (runs[k] / "run" / "checkpoints" / "last.pth" for k in ("1p", "finetune"))
    summary = json.loads((out / "0" / "run" / "summary.json").read_text())
    assert summary["checkpoint"] == str(tuned)
    assert (summary["checkpoint_epoch"], summary["checkpoint_iteration"]) == (1, 3)
    lines = proc.stdout.splitlines()
    assert f"[Warning] evaluating the fine-tuned {tuned}, not the older full training run's {full} " \
           f"(--checkpoint={full} evaluates that one)" in lines
    assert f"Evaluated checkpoint : {tuned} (epoch 1, iteration 3)" in lines
    log = (out / "0" / "eval_0.log").read_text()
    assert f"evaluating checkpoint {tuned} (epoch 1, iteration 3, experiment finetune, fine-tuned from {full})" in log

    # --checkpoint names the full training run's: that one, and no warning
    proc = script("train_eval_1p.sh", tmp_path, data, f"--checkpoint={full}", *SHRINK)
    summary = json.loads((out / "0" / "run" / "summary.json").read_text())
    assert summary["checkpoint"] == str(full) and summary["checkpoint_iteration"] == 2
    assert f"Evaluated checkpoint : {full} (epoch 1, iteration 2)" in proc.stdout.splitlines()
    assert "[Warning] evaluating" not in proc.stdout
    assert "did not finish" not in proc.stdout  # the fine-tuning above ended as asked: no warning there either

    # the default's run was stopped (SIGTERM: train.py's summary.json says status stopped): evaluated, and said so
    tuned_summary = runs["finetune"] / "run" / "summary.json"
    record = json.loads(tuned_summary.read_text())
    assert record["status"] == "ok"
    tuned_summary.write_text(json.dumps({**record, "status": "stopped"}, indent=2) + "\n")
    proc = script("train_eval_1p.sh", tmp_path, data, *SHRINK)
    assert f"[Warning] the training run of {tuned} did not finish (its summary.json says status stopped): its last " \
           "save is used (--checkpoint=PATH picks another)" in proc.stdout.splitlines()


def test_train_py_eval_or_finetune_without_checkpoint_is_one_line(synthetic_coco: Path, tmp_path: Path) -> None:
    """python train.py +experiment=eval (or finetune) without checkpoint=PATH: one [Error] line, no traceback."""
    for experiment, what in (("eval", "mode=eval"), ("finetune", "finetune.enabled=true")):
        proc = subprocess.run(
            [sys.executable, "train.py", f"+experiment={experiment}", "data=synthetic", f"data.root={synthetic_coco}",
             "data.generate=false", "runtime.device=cpu", f"run_dir={tmp_path / experiment}", "model=solov2_tiny",
             "data.num_workers=0"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
            text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [f"[Error] {what} needs checkpoint=PATH (the weights to "
                                                    f"{'evaluate' if experiment == 'eval' else 'start from'}: a "
                                                    "checkpoint of this project or one the converters read)"]
