"""LR scaling and schedule numbers, optimiser settings, launcher decisions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from solo_npu.engine.launch import launch, torchrun_env
from solo_npu.engine.optim import WarmupStepSchedule, build_optimizer, scaled_lr
from solo_npu.runtime import resolve_device


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.01, 16) == pytest.approx(0.01)
    assert scaled_lr(0.01, 2) == pytest.approx(0.00125)  # ModelZoo 1p, batch 2
    assert scaled_lr(0.01, 64) == pytest.approx(0.04)
    assert scaled_lr(0.01, 2, auto_scale=False) == 0.01


def test_warmup_and_steps_match_mmdet_formula() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupStepSchedule(opt, 0.02, lr_steps=[9, 11], gamma=0.1, warmup_iters=500, warmup_ratio=0.01)
    # mmdet linear warm-up: lr * (1 - (1 - i / W) * (1 - ratio))
    assert s.lr_at(0, 0) == pytest.approx(0.02 * 0.01)
    assert s.lr_at(250, 0) == pytest.approx(0.02 * (1 - 0.5 * 0.99))
    assert s.lr_at(500, 0) == pytest.approx(0.02)
    assert s.lr_at(10_000, 8) == pytest.approx(0.02)
    assert s.lr_at(10_000, 9) == pytest.approx(0.002)   # 10th epoch (0-based 9)
    assert s.lr_at(10_000, 11) == pytest.approx(0.0002)
    assert s.step(100, 0) == opt.param_groups[0]["lr"] == pytest.approx(0.02 * (1 - 0.8 * 0.99))
    restored = WarmupStepSchedule(opt, 1.0)
    restored.load_state_dict(s.state_dict())
    assert restored.lr_at(250, 10) == s.lr_at(250, 10)


def test_cosine_policy_follows_half_a_cosine_after_warmup() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupStepSchedule(opt, 0.004, warmup_iters=100, warmup_ratio=0.01, policy="cosine", total_iters=1000,
                           min_lr_ratio=0.05)
    assert s.lr_at(0, 0) == pytest.approx(0.004 * 0.01)  # warm-up factor times a cosine still at 1
    assert s.lr_at(500, 3) == pytest.approx(0.004 * (0.05 + 0.95 * 0.5))  # half-way; the epoch plays no part
    assert s.lr_at(1000, 5) == pytest.approx(0.004 * 0.05)
    assert s.lr_at(2000, 9) == pytest.approx(0.004 * 0.05)  # past the end it stays at the floor
    lrs = [s.lr_at(i, 0) for i in range(100, 1001, 50)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    restored = WarmupStepSchedule(opt, 1.0)
    restored.load_state_dict(s.state_dict())
    assert [restored.lr_at(i, 0) for i in (0, 333, 999)] == [s.lr_at(i, 0) for i in (0, 333, 999)]
    with pytest.raises(ValueError, match="total number of iterations"):
        WarmupStepSchedule(opt, 0.1, policy="cosine")
    with pytest.raises(ValueError, match="policy"):
        WarmupStepSchedule(opt, 0.1, policy="poly")


def test_adamw_takes_betas_and_weight_decay() -> None:
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, {"name": "adamw", "betas": [0.8, 0.99], "weight_decay": 0.05},
                          resolve_device("cpu"), 0.002)
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.002, (0.8, 0.99), 0.05)


def test_optimizer_uses_reference_settings_and_skips_frozen() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, {"momentum": 0.9, "weight_decay": 1e-4}, resolve_device("cpu"), 0.01)
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-4)
    assert sum(p.numel() for p in group["params"]) == 2 + 2 + 1
    with pytest.raises(ValueError, match="adam"):
        build_optimizer(model, {"name": "adam"}, resolve_device("cpu"), 0.01)


def test_torchrun_environment_is_detected() -> None:
    assert torchrun_env({}) is None
    env = torchrun_env({"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                        "MASTER_PORT": "29600"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port) == (5, 1, 16, "10.0.0.1",
                                                                                            29600)


def _job(cfg: dict, run_dir: Path, info) -> tuple:
    return cfg["marker"], str(run_dir), info.type


def test_single_worker_runs_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"marker": 7, "runtime": {"device": "cpu"}, "launcher": {"nproc_per_node": 1}}
    assert launch(_job, cfg, tmp_path) == (7, str(tmp_path), "cpu")


def test_bad_launcher_settings_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="master_port"):
        launch(_job, {"launcher": {"nproc_per_node": 2, "nnodes": 2, "master_port": 0}}, tmp_path)
    with pytest.raises(ValueError, match="node_rank"):
        launch(_job, {"launcher": {"nproc_per_node": 1, "nnodes": 2, "node_rank": 2}}, tmp_path)
    # every node would wait for its own 127.0.0.1 until launcher.timeout_min ran out
    for addr in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(ValueError, match=rf"needs launcher.master_addr set to node 0's address.*\(it is {addr}"):
            launch(_job, {"launcher": {"nproc_per_node": 1, "nnodes": 2, "master_port": 29511, "master_addr": addr}},
                   tmp_path)


def _job_with_exit_handler(cfg: dict, run_dir: Path, info) -> None:
    import atexit
    import threading

    import torch.distributed as dist

    rank = dist.get_rank()
    # A non-daemon thread still writing when the job returns, and an exit handler: both must finish.
    writer = threading.Thread(target=lambda: (run_dir / f"thread{rank}.txt").write_text("done"))
    atexit.register(lambda: (run_dir / f"atexit{rank}.txt").write_text(str(rank)))
    writer.start()
    if cfg["fail"] and rank == 1:
        raise RuntimeError("rank 1 failed on purpose")


def test_spawned_worker_ends_after_its_exit_handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker leaves without interpreter teardown only after its threads and exit handlers ran;
    a failing rank still fails the launch."""
    from torch.multiprocessing.spawn import ProcessException

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"fail": False, "runtime": {"device": "cpu"}, "launcher": {"nproc_per_node": 2}}
    assert launch(_job_with_exit_handler, cfg, tmp_path) is None
    for rank in (0, 1):
        assert (tmp_path / f"atexit{rank}.txt").read_text() == str(rank)
        assert (tmp_path / f"thread{rank}.txt").read_text() == "done"
    failing = tmp_path / "failing"
    failing.mkdir()
    # Whichever rank torch.multiprocessing reports first (rank 1's error, or rank 0's barrier losing its peer).
    with pytest.raises(ProcessException):
        launch(_job_with_exit_handler, {**cfg, "fail": True}, failing)


def test_part_of_a_launcher_environment_is_not_taken_for_one(caplog: pytest.LogCaptureFixture) -> None:
    """RANK and WORLD_SIZE without LOCAL_RANK (a hand-written or foreign launcher) is no torchrun group: train.py would
    start its own workers and each such process would train alone. A world of several is one line naming what is
    missing; a lone leftover variable is a WARNING."""
    from solo_npu.config.values import ConfigValueError
    from solo_npu.engine.launch import check_launcher_env

    partial = {"RANK": "3", "WORLD_SIZE": "8"}
    assert torchrun_env(partial) is None
    with pytest.raises(ConfigValueError, match=r"sets RANK=3, WORLD_SIZE=8 but not LOCAL_RANK: start the workers "
                                               r"with torchrun"):
        check_launcher_env(partial)
    check_launcher_env({})  # no launcher
    check_launcher_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})  # torchrun's
    with caplog.at_level(logging.WARNING):
        check_launcher_env({"RANK": "0"})
    assert [r.getMessage() for r in caplog.records] == [
        "the environment sets RANK=0 but not WORLD_SIZE, LOCAL_RANK: ignored (not started by torchrun); train.py "
        "starts its own workers"]


def _job_threads(cfg: dict, run_dir: Path, info) -> None:
    import torch.distributed as dist

    (run_dir / f"threads{dist.get_rank()}.txt").write_text(str(torch.get_num_threads()))


def test_spawned_workers_share_the_parents_cpu_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker is a fresh interpreter: a thread count set in the parent does not reach it, and each of
    the node's workers would take every core. Each gets the parent's count split between them, unless
    OMP_NUM_THREADS is set, which then holds per process (as under torchrun)."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"runtime": {"device": "cpu"}, "launcher": {"nproc_per_node": 2}}
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(14)  # no machine's default: the workers' 7 can only come from the split
        assert launch(_job_threads, cfg, tmp_path) is None
        assert [(tmp_path / f"threads{r}.txt").read_text() for r in (0, 1)] == ["7", "7"]
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        per_process = tmp_path / "omp"
        per_process.mkdir()
        assert launch(_job_threads, cfg, per_process) is None
        assert [(per_process / f"threads{r}.txt").read_text() for r in (0, 1)] == ["1", "1"]
    finally:
        torch.set_num_threads(saved)


def test_a_run_long_past_its_last_lr_step_is_said() -> None:
    """train.epochs raised without optim.lr_steps (train_full_8p.sh --epochs=24 on the 1x steps): the last 13 epochs
    ran at 1% of the LR in silence. The recipes' own tails (1x: 1 epoch, fine-tuning: 2, 3x: 3) say nothing."""
    from solo_npu.engine.optim import schedule_notice

    assert schedule_notice("step", [9, 11], 24, 0.1) == (
        "train.epochs=24 with optim.lr_steps=[9, 11]: the last 13 epochs (11-23, 0-based) run at 0.01x the LR; a "
        "longer run moves the steps too (optim=3x: 36 epochs with steps [27, 33], or optim.lr_steps=[...])")
    for policy, steps, epochs in (("step", [9, 11], 12), ("step", [8, 11], 12), ("step", [27, 33], 36),
                                  ("step", [4], 6), ("step", [9, 11], 8), ("cosine", [9, 11], 24), ("step", [], 24)):
        assert schedule_notice(policy, steps, epochs, 0.1) is None, (policy, steps, epochs)
