"""train.py as users run it: 2-process gloo DDP, and kill -9 followed by resume=auto."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from solo_npu.checkpoints import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.plots=false", "train.eval_interval=0", "train.eval_at_end=false"]


def _cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "+experiment=smoke", *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(*overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(*overrides), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_ddp_gloo(synthetic_coco: Path, tmp_path: Path) -> None:
    outs = tmp_path / "outputs"
    _run(f"data.root={synthetic_coco}", "data.generate=false", "launcher.nproc_per_node=2", "train.epochs=3",
         "optim.auto_scale_lr=false", "optim.base_lr=0.01",
         "train.log_interval=1", f"output_root={outs}", "train.plots=false")
    runs = list(outs.iterdir())
    assert len(runs) == 1, runs  # one directory per run, not one per rank
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "ok"
    assert summary["ranks_in_sync"] is True  # both ranks ended with bit-identical weights
    assert summary["iterations"] == 15  # 9 padded batches of 2 per epoch -> 10, split over 2 ranks
    with open(run_dir / "metrics.csv", newline="") as f:
        cls = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss_cls"]
    assert sum(cls[-3:]) < sum(cls[:3]), cls
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.pth").is_file()
    assert "images/s" in (run_dir / "train.log").read_text()


def _iteration(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["iteration"])
    except (CheckpointError, KeyError):
        return -1


def _stop_when_checkpointed(run_dir: Path, common: list[str], signum: int, group: bool) -> tuple[int, str]:
    """Start a run in a session of its own and send ``signum`` (to the whole process group, as a terminal's
    Ctrl-C reaches the data-loader workers too, when ``group``) once ``last.pth`` holds 2 or more iterations;
    returns the exit status and stderr."""
    # SIGINT at its default: a test run started in the background by a non-interactive shell has it ignored,
    # and so would train.py (Python keeps an inherited SIG_IGN; so do the trainer's handlers)
    proc = subprocess.Popen(_cmd(*common, f"run_dir={run_dir}"), cwd=ROOT, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = run_dir / "checkpoints" / "last.pth"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and _iteration(last) >= 2:
                os.killpg(proc.pid, signum) if group else os.kill(proc.pid, signum)
                break
            time.sleep(0.01)
    finally:
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_kill_9_sigterm_or_ctrl_c_then_resume_matches_uninterrupted_run(synthetic_coco: Path,
                                                                        tmp_path: Path) -> None:
    """kill -9 loses the steps after the last periodic checkpoint; SIGTERM and a terminal's Ctrl-C (the whole
    process group, data-loader workers included) stop after the step in progress and save it. Each run then
    resumes to the uninterrupted run's weights, bit for bit."""
    common = [f"data.root={synthetic_coco}", "data.generate=false", "train.epochs=2",
              "train.checkpoint_interval_iters=2", *FAST]
    ref_dir = tmp_path / "reference"
    _run(*common, f"run_dir={ref_dir}")
    ref = load_checkpoint(ref_dir / "checkpoints" / "last.pth")
    ref_counts = json.loads((ref_dir / "summary.json").read_text())["epoch_counts"]

    cases = ((signal.SIGKILL, False, -signal.SIGKILL, None, []),
             (signal.SIGTERM, False, 143, "SIGTERM", []),
             (signal.SIGINT, True, 130, "Ctrl-C", ["data.num_workers=2"]))
    for signum, group, status, name, extra in cases:
        run_dir = tmp_path / signal.Signals(signum).name
        last = run_dir / "checkpoints" / "last.pth"
        for _ in range(3):  # a loaded machine can deliver the signal after the last step (or the end): again
            shutil.rmtree(run_dir, ignore_errors=True)
            returncode, err = _stop_when_checkpointed(run_dir, [*common, *extra], signum, group)
            stopped_at = _iteration(last)
            if stopped_at < 18:
                break
        assert returncode == status, ("the run ended before it could be stopped", name, returncode, err[-2000:])
        assert 2 <= stopped_at < 18, ("the signal came after the last step three times", name)
        if name:  # the state after the step in progress is saved, not only the last periodic checkpoint
            assert f"[Error] stopped by {name}; resume=auto" in err
            assert f"stopped at iteration {stopped_at}; state saved" in (run_dir / "train.log").read_text()
            summary = json.loads((run_dir / "summary.json").read_text())
            assert (summary["status"], summary["iterations"]) == ("stopped", stopped_at)

        _run(*common, *extra, f"run_dir={run_dir}", "resume=auto")
        assert f"resumed from {last}" in (run_dir / "train.log").read_text()
        got = load_checkpoint(last)
        assert got["iteration"] == ref["iteration"] == 18
        assert ref["model"].keys() == got["model"].keys()
        for key, value in ref["model"].items():
            assert torch.equal(value, got["model"][key]), (name, key)
        for a, b in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
            assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
        # The counts hook's state came back with the checkpoint: the epoch the stop cut in two has one entry
        # over all its 9 steps, as in the uninterrupted run.
        got_counts = json.loads((run_dir / "summary.json").read_text())["epoch_counts"]
        assert got_counts == ref_counts and [e["iterations"] for e in got_counts] == [9, 9]


def test_torchrun_workers_join_instead_of_launching(synthetic_coco: Path, tmp_path: Path) -> None:
    # launcher.nproc_per_node=8 would spawn 8 workers; under torchrun each process is already a worker.
    outs = tmp_path / "outputs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), "+experiment=smoke", f"data.root={synthetic_coco}", "data.generate=false",
           "launcher.nproc_per_node=8", "train.epochs=1", f"output_root={outs}", *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list(outs.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun_"), runs  # both ranks chose the same directory
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "ok" and summary["ranks_in_sync"] is True


def test_torchrun_worker_error_line_keeps_its_status(tmp_path: Path) -> None:
    """A torchrun worker leaves through ``exit_process`` (no interpreter teardown after gloo): its ``[Error]``
    line still reaches stderr and its exit status is 1, as ``sys.exit("[Error] ...")`` gives."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), "+experiment=smoke", f"data.root={tmp_path / 'nowhere'}", "data.generate=false",
           f"output_root={tmp_path / 'outputs'}", *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("[Error] ") >= 1 and "nowhere" in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 1" in proc.stderr and "exitcode  : -6" not in proc.stderr, proc.stderr[-3000:]


def test_sigterm_to_a_spawned_two_rank_run_stops_both_ranks_and_saves(synthetic_coco: Path, tmp_path: Path) -> None:
    """``python train.py launcher.nproc_per_node=2`` (the 8p path): SIGTERM to train.py reaches both spawned
    ranks, they stop after the same step, rank 0 saves it, and train.py exits 143 with one line."""
    run_dir = tmp_path / "run"
    common = [f"data.root={synthetic_coco}", "data.generate=false", "train.epochs=3", "launcher.nproc_per_node=2",
              "train.checkpoint_interval_iters=2", *FAST]
    returncode, err = _stop_when_checkpointed(run_dir, common, signal.SIGTERM, group=False)
    assert returncode == 143, (returncode, err[-3000:])
    assert "[Error] stopped by SIGTERM; resume=auto" in err and "Traceback" not in err, err[-3000:]
    stopped_at = _iteration(run_dir / "checkpoints" / "last.pth")
    assert 2 <= stopped_at < 15  # 5 steps per epoch on 2 ranks
    assert f"stopped at iteration {stopped_at}; state saved" in (run_dir / "train.log").read_text()


def test_sigint_to_the_parent_of_a_spawned_two_rank_run_stops_it_like_ctrl_c(synthetic_coco: Path,
                                                                            tmp_path: Path) -> None:
    """``kill -INT`` of train.py alone (what job schedulers, IDEs and ``timeout --foreground -s INT`` send; a
    terminal's Ctrl-C reaches the ranks too) is passed on to both spawned ranks: they stop after the same step,
    rank 0 saves it, and train.py exits 130 with one line, as after Ctrl-C."""
    run_dir = tmp_path / "run"
    common = [f"data.root={synthetic_coco}", "data.generate=false", "train.epochs=3", "launcher.nproc_per_node=2",
              "train.checkpoint_interval_iters=2", *FAST]
    returncode, err = _stop_when_checkpointed(run_dir, common, signal.SIGINT, group=False)
    assert returncode == 130, ("the run was not stopped", returncode, err[-3000:])
    assert "[Error] stopped by Ctrl-C; resume=auto" in err and "Traceback" not in err, err[-3000:]
    stopped_at = _iteration(run_dir / "checkpoints" / "last.pth")
    assert 2 <= stopped_at < 15  # 5 steps per epoch on 2 ranks
    assert f"stopped at iteration {stopped_at}; state saved" in (run_dir / "train.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["iterations"]) == ("stopped", stopped_at)


def test_device_and_checkpoint_errors_are_one_line_in_spawned_and_single_runs(tmp_path: Path) -> None:
    """A worker's DeviceError reaches the parent as torch.multiprocessing's traceback; a CheckpointError from a
    resume file that is not a training checkpoint is raised after start-up. Both end in one [Error] line."""
    not_a_run = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(2)}, not_a_run)
    cases = ((["launcher.nproc_per_node=2", "runtime.device=cuda"] if not torch.cuda.is_available() else None,
              "[Error] DeviceError: device=cuda requested but torch.cuda.is_available() is False"),
             ([f"resume={not_a_run}"], "[Error] CheckpointError: not a training checkpoint of this project"))
    for overrides, line in cases:
        if overrides is None:
            continue
        proc = subprocess.run(_cmd(*overrides, f"output_root={tmp_path / 'out'}", *FAST), cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and line in proc.stderr, (proc.returncode, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]


def test_missing_dataset_files_are_one_line_before_any_worker_starts(synthetic_coco: Path, tmp_path: Path) -> None:
    """data.root without a split's annotation file (training: train and val; mode=eval: val) or with the file
    but without its image folder: one [Error] line naming the file and the data.root it was looked for in,
    exit 1, no traceback, and no worker started (no run log written by one)."""
    partial = tmp_path / "coco"
    (partial / "annotations").mkdir(parents=True)
    shutil.copy(synthetic_coco / "annotations" / "instances_val2017.json", partial / "annotations")
    shutil.copytree(synthetic_coco / "val2017", partial / "val2017")
    nowhere = tmp_path / "nowhere"
    cases = (([f"data.root={nowhere}", "launcher.nproc_per_node=2"],
              f"[Error] data.train.ann_file: annotation file {nowhere}/annotations/instances_train2017.json "
              f"not found (data.root={nowhere}); data.root=PATH names a COCO-layout folder holding "
              "annotations/instances_train2017.json and train2017/"),
             ([f"data.root={partial}", "mode=eval", f"checkpoint={tmp_path / 'best.pth'}"], None),
             ([f"data.root={partial}"], f"[Error] data.train.ann_file: annotation file {partial}/annotations/"),
             ([f"data.root={partial}", "mode=eval", f"checkpoint={tmp_path / 'best.pth'}", "data.val.img_dir=images"],
              f"[Error] data.val.img_dir: image folder {partial}/images not found (data.root={partial});"))
    for i, (overrides, line) in enumerate(cases):
        out = tmp_path / f"out{i}"
        proc = subprocess.run(_cmd(*overrides, "data.generate=false", f"output_root={out}", *FAST), cwd=ROOT,
                              env=_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        if line is None:  # the val split is all that evaluation needs: it gets as far as the missing checkpoint
            assert "[Error] CheckpointError: checkpoint not found" in proc.stderr, proc.stderr[-3000:]
            continue
        assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-3000:]
        logs = "".join(p.read_text() for p in out.rglob("train.log"))
        assert "run directory" not in logs, "a worker started"  # run_job's first line


def test_unreadable_annotation_file_is_one_line_in_spawned_and_single_runs(synthetic_coco: Path,
                                                                         tmp_path: Path) -> None:
    """An annotation file cut short (as an interrupted copy leaves it) is read by the workers: a spawned
    two-rank run and a one-process run both end in one [Error] line naming it, exit 1, no traceback."""
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    ann_file = root / "annotations" / "instances_train2017.json"
    text = ann_file.read_bytes()
    ann_file.write_bytes(text[: len(text) // 3])
    for i, overrides in enumerate((["launcher.nproc_per_node=2"], [])):
        proc = subprocess.run(_cmd(*overrides, f"data.root={root}", "data.generate=false",
                                   f"output_root={tmp_path / f'out{i}'}", *FAST),
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(f"[Error] {ann_file} is not a JSON file ("), \
            proc.stderr[-3000:]


def test_val_images_one_folder_too_deep_is_one_line_in_spawned_and_single_runs(synthetic_coco: Path,
                                                                              tmp_path: Path) -> None:
    """val2017/ holding val2017/*.png (an archive unpacked into a folder of its own name): the run would have
    trained and then scored no image (AP 0.0); spawned or not, it stops at once with one line naming the folder."""
    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    (root / "val2017").rename(tmp_path / "val2017")
    (root / "val2017").mkdir()
    (tmp_path / "val2017").rename(root / "val2017" / "val2017")
    for i, overrides in enumerate((["launcher.nproc_per_node=2"], [])):
        proc = subprocess.run(_cmd(*overrides, f"data.root={root}", "data.generate=false",
                                   f"output_root={tmp_path / f'out{i}'}", *FAST),
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"[Error] no images found in {root / 'val2017'}: none of the ") and last.endswith(
            f"is in {root / 'val2017' / 'val2017'}: point the split's img_dir there"), proc.stderr[-3000:]
        assert not list((tmp_path / f"out{i}").rglob("*.pth"))  # stopped before training


def test_unknown_setting_is_one_line_naming_the_closest(tmp_path: Path) -> None:
    """A mistyped key is one [Error] line before Hydra composes anything; group choices stay Hydra's."""
    cases = {"train.epochz=3": "train has no setting 'epochz' (did you mean train.epochs?)",
             "trian.epochs=3": "the config has no setting 'trian' (did you mean train?)",
             "data.normalize.styel=caffe": "data.normalize has no setting 'styel' (did you mean data.normalize.style?)"}
    for override, why in cases.items():
        proc = subprocess.run(_cmd(override, f"output_root={tmp_path}"), cwd=ROOT, env=_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip() == (
            f"[Error] unknown setting {override.split('=')[0]} in '{override}': {why}"), proc.stderr
    assert not any(tmp_path.iterdir())  # no run directory was made

    from solo_npu.config.deploy_schema import check_overrides
    from solo_npu.config.schema import TrainJobConfig

    known = ["+experiment=[1p,finetune]", "model=solov2_r50", "optim=finetune", "model.backbone.style=caffe",
             "train.epochs=3", "launcher.nproc_per_node=8", "data.normalize.mean=[1,2,3]", "hydra.run.dir=x",
             "checkpoint=a.pth", "runtime.npu.jit_compile=false", "--cfg", "job"]
    assert check_overrides(known, TrainJobConfig, ROOT / "conf") is None


@pytest.mark.parametrize("override, says", [
    ("+model.head.loss_cls.gama=5", "model.head.loss_cls has no key 'gama': the focal loss takes gamma, alpha, weight"),
    ("+model.head.foo=5", "SOLOv2Head.__init__() got an unexpected keyword argument 'foo'"),
])
def test_a_model_setting_the_builder_refuses_is_one_line_at_the_start(tmp_path, override, says) -> None:
    """A model setting its builder refuses or does not take: one line before any data or worker (it was Hydra's
    instantiation report from inside the worker, after the synthetic set was generated)."""
    from engine_support import refused_at_start

    err = refused_at_start(tmp_path, "+experiment=smoke", override)
    assert err == f"[Error] model config (solo_npu.models.solov2.build_solov2): {says}"


def test_a_model_class_count_other_than_the_datasets_is_one_line(tmp_path) -> None:
    """train.py builds the model for its dataset's classes: model.num_classes=5 on a 3-class set was replaced by 3
    in silence."""
    from engine_support import refused_at_start

    err = refused_at_start(tmp_path, "+experiment=smoke", "model.num_classes=5")
    assert err == ("[Error] model.num_classes=5: train.py builds the model for its dataset's classes "
                   "(data.num_classes=3); set data.num_classes (with data.class_names or an annotation file of those "
                   "classes) instead")


def test_eval_detections_in_a_training_run_is_said(tmp_path, smoke_data, caplog) -> None:
    """eval_detections=FILE is written by mode=eval alone: a training run set with it wrote nothing, silently."""
    from engine_support import compose_train_cfg
    from omegaconf import OmegaConf

    from solo_npu.engine.job import check_start

    cfg = compose_train_cfg(["+experiment=smoke", *smoke_data, f"eval_detections={tmp_path / 'det.json'}"])
    with caplog.at_level("WARNING", logger="solo_npu.engine.job"):
        check_start(OmegaConf.to_container(cfg, resolve=True), tmp_path / "run")
    assert "is written by an evaluation run (+experiment=eval checkpoint=PATH), not by training" in caplog.text


def test_a_resume_path_that_is_no_file_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """resume=PATH that does not exist, or a run directory (which checkpoint= already said in one line): one
    [Error] line naming what to give, before the data or a worker; before, a Hydra traceback that called a
    directory "no such file"."""
    run = tmp_path / "runs" / "a"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, run / "checkpoints" / "last.pth")
    cases = ((tmp_path / "missing.pth", f"[Error] CheckpointError: resume={tmp_path / 'missing.pth'}: no such file "
              "(resume=auto run_dir=<the run directory> continues a run from its checkpoints/last.pth)"),
             (run, f"[Error] CheckpointError: resume={run} is a directory, not a checkpoint file: "
              f"resume={run / 'checkpoints' / 'last.pth'}, or resume=auto run_dir={run}"),
             (run / "checkpoints", f"[Error] CheckpointError: resume={run / 'checkpoints'} is a directory, not a "
              f"checkpoint file: resume={run / 'checkpoints' / 'last.pth'}, or resume=auto run_dir={run}"))
    for path, line in cases:
        proc = subprocess.run(_cmd(f"resume={path}", "data=synthetic", f"data.root={tmp_path / 'data'}",
                                   f"output_root={tmp_path / 'out'}"), cwd=ROOT, env=_env(), capture_output=True,
                              text=True, timeout=240)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == line, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()
