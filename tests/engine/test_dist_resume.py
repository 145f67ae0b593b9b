"""Resume and start-up on several ranks: every rank resumes from the file global rank 0 chose, or all stop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_support import compose_train_cfg
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError, save_checkpoint
from solo_npu.engine.checkpointer import FORMAT
from solo_npu.engine.launch import launch


def _job_in_node_dir(cfg: dict, run_dir: Path, info) -> object:
    """Each rank works in its own directory, as the ranks of different nodes do without a shared filesystem:
    ``resume=ckpt/last.pth`` is rank 0's file, which rank 1 sees only where its node has a copy."""
    import torch.distributed as dist

    from solo_npu.engine.job import run_job

    os.chdir(cfg.pop("node_dirs")[dist.get_rank()])
    return run_job(cfg, run_dir, info)


def _fake_last(node_dir: Path, iteration: int) -> None:
    # Only what the ranks compare before any model is built; the run stops before restoring it.
    save_checkpoint({"format": FORMAT, "epoch": 0, "iteration": iteration}, node_dir / "ckpt" / "last.pth")


def _launch_2_ranks(tmp_path: Path, node_dirs: list[Path]) -> str:
    cfg = compose_train_cfg(["+experiment=smoke", "launcher.nproc_per_node=2", "resume=ckpt/last.pth"])
    job_cfg = {**OmegaConf.to_container(cfg, resolve=True), "node_dirs": [str(d) for d in node_dirs]}
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    with pytest.raises(CheckpointError) as failure:  # a worker's CheckpointError, rebuilt in the parent
        launch(_job_in_node_dir, job_cfg, run_dir)
    return str(failure.value)


def test_resume_stops_every_rank_when_one_node_lacks_the_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    _fake_last(node0, 6)
    node1.mkdir()
    message = _launch_2_ranks(tmp_path, [node0, node1])
    assert ("resume needs ckpt/last.pth on every node: ranks [1] cannot read it; put the run directory on a "
            "shared filesystem or copy it") in message, message
    # A node with an older copy of the file: the ranks would resume at different iterations.
    _fake_last(node1, 4)
    message = _launch_2_ranks(tmp_path, [node0, node1])
    assert "resume needs the same ckpt/last.pth on every node: ranks [1] read another copy" in message, message
    assert "(0, 4) instead of rank 0's (0, 6)" in message, message


def _drop_dirs_at_once(dirs: list[str], shared: str, barrier, errors) -> None:
    from solo_npu.engine.launch import drop_own_run_dir

    for d in dirs:
        barrier.wait()
        try:
            drop_own_run_dir(Path(d), Path(shared))
        except OSError as exc:
            errors.put(repr(exc))


def test_ranks_removing_one_empty_run_dir_at_once_do_not_fail(tmp_path: Path) -> None:
    """The ranks of a node that composed the config in the same second remove their one stale directory together."""
    import multiprocessing

    shared = tmp_path / "rank0_dir"
    shared.mkdir()
    dirs = [tmp_path / f"stale{i}" for i in range(60)]
    for d in dirs:
        d.mkdir()
    kept = tmp_path / "not_empty"
    (kept / "train.log").parent.mkdir()
    (kept / "train.log").write_text("")
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_drop_dirs_at_once, args=([str(d) for d in dirs], str(shared), barrier, errors))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found[:3]
    assert all(p.exitcode == 0 for p in procs) and not any(d.exists() for d in dirs)
    from solo_npu.engine.launch import drop_own_run_dir

    drop_own_run_dir(kept, shared)  # a directory with files in it stays
    drop_own_run_dir(shared, shared)
    assert (kept / "train.log").is_file() and shared.is_dir()


def test_restarted_torchrun_attempt_resumes_the_runs_last_checkpoint(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from solo_npu.engine.job import attempt_resume

    run_dir = tmp_path / "torchrun_abc"
    last = run_dir / "checkpoints" / "last.pth"
    first = {"TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "3", "TORCHELASTIC_RUN_ID": "abc"}
    restart = {**first, "TORCHELASTIC_RESTART_COUNT": "1"}
    with caplog.at_level("INFO", logger="solo_npu.engine.job"):
        assert attempt_resume({"resume": None}, run_dir, {}) is None
        assert attempt_resume({"resume": None}, run_dir, first) is None
        assert attempt_resume({"resume": None}, run_dir, restart) is None  # the first attempt saved nothing
        assert not caplog.records
        last.parent.mkdir(parents=True)
        last.write_bytes(b"")
        assert attempt_resume({"resume": None}, run_dir, first) is None
        assert attempt_resume({"resume": None}, run_dir, restart) == str(last)
        assert attempt_resume({"resume": "auto"}, run_dir, restart) == str(last)
        assert attempt_resume({"resume": "old/epoch_3.pth"}, run_dir, restart) == str(last)
        assert [r.getMessage() for r in caplog.records][0] == (
            f"torchrun restart 1: resuming from {last}, the last checkpoint of the earlier attempts")
        assert {r.levelname for r in caplog.records} == {"INFO"}
        caplog.clear()
        # No rendezvous id (static rendezvous) and no run_dir=: each attempt composed its own timestamped directory.
        static = {**restart, "TORCHELASTIC_RUN_ID": "none"}
        assert attempt_resume({"resume": None}, run_dir, static) is None
        assert attempt_resume({"resume": None, "run_dir": str(run_dir)}, run_dir, static) == str(last)
        assert attempt_resume({"resume": None}, run_dir, {**static, "SOLO_RUN_DIR": str(run_dir)}) == str(last)
        assert attempt_resume({"resume": None}, run_dir, {**first, "TORCHELASTIC_RUN_ID": "none"}) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"torchrun restart 1: this attempt starts over in a new run directory {run_dir}")
    assert warnings[1].startswith("torchrun --max_restarts=3: a restarted attempt will start over")
    assert all(w.endswith("give run_dir=... (or a unique --rdzv-id) so that restarts resume the run")
               for w in warnings)


def test_restarted_attempt_trains_on_from_the_first_attempts_checkpoint(smoke_data: list[str], tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-process torchrun worker (RANK set): the first attempt stops at iteration 4, the restart goes on to 6."""
    from engine_support import run_train

    fast = [*smoke_data, "train.plots=false", "train.eval_interval=0", "train.eval_at_end=false",
            "train.checkpoint_interval_iters=2"]
    run_dir = tmp_path / "torchrun_abc"
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "abc",
                       "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(key, value)
    assert run_train([*fast, "train.max_iters=4"], run_dir)["iterations"] == 4
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    summary = run_train([*fast, "train.max_iters=6"], run_dir)
    assert summary["iterations"] == 6
    log = (run_dir / "train.log").read_text()
    assert "torchrun restart 1: resuming from" in log and "resumed from" in log and "at epoch 1, iteration 4" in log


def test_explicit_accelerator_index_with_several_ranks_on_a_node_fails_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from solo_npu.engine.launch import check_device_per_rank
    from solo_npu.runtime import DeviceError

    for device in ("npu", "cuda", "auto", "cpu", "cpu:0"):
        check_device_per_rank(device, 8)
    check_device_per_rank("npu:3", 1)
    with pytest.raises(DeviceError, match=r"runtime.device=npu:3 names one device but 8 ranks run on this node: "
                                          r"use runtime.device=npu \(local rank r takes device r\) and "
                                          "ASCEND_RT_VISIBLE_DEVICES"):
        check_device_per_rank("npu:3", 8)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DeviceError, match="cuda:1 names one device but 2 ranks.*CUDA_VISIBLE_DEVICES"):
        launch(_job_in_node_dir, {"runtime": {"device": "cuda:1"}, "launcher": {"nproc_per_node": 2}}, tmp_path)


def test_sync_bn_on_the_cpu_is_off_with_a_warning(smoke_data: list[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_support import run_train

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    summary = run_train([*smoke_data, "launcher.nproc_per_node=2", "train.sync_bn=true", "train.max_iters=2",
                         "train.plots=false", "train.eval_interval=0", "train.eval_at_end=false"], tmp_path)
    assert summary["status"] == "ok" and summary["world_size"] == 2 and summary["iterations"] == 2
    assert "train.sync_bn=true: SyncBatchNorm needs CUDA or NPU devices" in (tmp_path / "train.log").read_text()


class _BuffersSeen:
    """An evaluator that records the BatchNorm statistics the model holds when the evaluation scores."""

    def __init__(self, model):
        self.model = model

    def reset(self) -> None:
        pass

    def evaluate(self) -> dict:
        bn = self.model[1]
        return {"mean": bn.running_mean.tolist(), "var": bn.running_var.tolist()}


def _evaluate_with_rank_own_statistics(cfg: dict, run_dir: Path, info) -> None:
    """Each rank's BatchNorm statistics differ (as after a last training step on its own batch); the evaluation's
    view of them is written per rank."""
    import json

    import torch
    import torch.distributed as dist
    from torch import nn

    from solo_npu.engine.evaluate import evaluate

    rank = dist.get_rank()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(float(rank + 1))
    model[1].running_var.fill_(float(10 * (rank + 1)))
    seen = evaluate(model, [], _BuffersSeen(model), info)
    (run_dir / f"rank{rank}.json").write_text(json.dumps(seen))
    assert torch.equal(model[1].running_mean, torch.ones(4))


def test_two_rank_evaluation_scores_rank_0s_batchnorm_statistics(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """After the last step each rank holds BatchNorm statistics of its own batch (DDP broadcasts rank 0's at the
    next forward, not after the last one); the evaluation gives every rank rank 0's first, those its checkpoints
    hold, as mmcv's DistEvalHook does (broadcast_bn_buffer). Before, rank 1 scored its shard with its own: a
    2-rank smoke run reported segm AP 0.002909 where its last.pth scores 0.002915."""
    import json

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    launch(_evaluate_with_rank_own_statistics, {"launcher": {"nproc_per_node": 2}, "runtime": {"device": "cpu"}},
           tmp_path)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1] == {"mean": [1.0] * 4, "var": [10.0] * 4}


def test_resume_stops_every_rank_when_one_node_holds_other_weights(smoke_data: list[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose copy of the resume file has the same epoch and iteration but other weights (another run's
    file at the same path): every rank stops with one line. Before, each rank loaded its own copy after DDP had
    broadcast rank 0's weights, and the ranks trained apart for the whole run."""
    import torch
    from engine_support import run_train

    from solo_npu.checkpoints import load_checkpoint

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    run_train([*smoke_data, "train.max_iters=2", "train.plots=false", "train.eval_interval=0",
               "train.eval_at_end=false"], tmp_path / "first")
    state = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pth")
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    save_checkpoint(state, node0 / "ckpt" / "last.pth")
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    original = state["model"][key].clone()
    state["model"][key] = original + 1.0
    save_checkpoint(state, node1 / "ckpt" / "last.pth")
    cfg = compose_train_cfg(["+experiment=smoke", *smoke_data, "launcher.nproc_per_node=2", "resume=ckpt/last.pth",
                             "train.max_iters=3", "train.plots=false", "train.eval_interval=0",
                             "train.eval_at_end=false"])
    job_cfg = {**OmegaConf.to_container(cfg, resolve=True), "node_dirs": [str(node0), str(node1)]}
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="resume needs the same ckpt/last.pth on every node: the ranks loaded "
                                              "different weights"):
        launch(_job_in_node_dir, job_cfg, tmp_path / "run")
    assert torch.equal(load_checkpoint(node0 / "ckpt" / "last.pth")["model"][key], original)  # nothing trained
