"""Training checkpoints: full state for exact resume, written atomically."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.engine import comm
from solo_npu.runtime import accelerator_rng_states, set_accelerator_rng_states

logger = logging.getLogger(__name__)

FORMAT = "solo_npu.train/1"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in types that ``weights_only`` loading accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    state.update(accelerator_rng_states())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    set_accelerator_rng_states({k: v for k, v in state.items() if k in ("cuda", "npu")})


def training_state(trainer: Any, schedule: Any = None, config: dict | None = None,
                   extra: dict | None = None) -> dict[str, Any]:
    """Everything needed to continue ``trainer`` exactly where it is, its hooks' state included (``hooks``)."""
    return {
        "format": FORMAT,
        "model": unwrap(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "scheduler": schedule.state_dict() if schedule is not None else {},
        "epoch": trainer.epoch,
        "inner_iter": trainer.inner_iter,  # sampler position inside the epoch
        "iteration": trainer.iter,
        "nonfinite_total": trainer.nonfinite_total,
        "hooks": trainer.hooks_state_dict(),
        "rng": rng_state(),
        "config": config or {},
        **(extra or {}),
    }


def restore_training_state(trainer: Any, state: dict[str, Any], schedule: Any = None) -> None:
    """Load a ``training_state`` dict into ``trainer`` (model, optimiser, scaler, schedule, counters, hooks, RNG).

    Register the hooks first: each takes its own state back (:meth:`~solo_npu.engine.trainer.Trainer.load_hooks_state`).
    """
    if state.get("format") != FORMAT:
        raise CheckpointError("not a training checkpoint of this project (use checkpoint=... to start from weights)")
    unwrap(trainer.model).load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    if schedule is not None and state.get("scheduler"):
        schedule.load_state_dict(state["scheduler"])
    trainer.epoch = int(state["epoch"])
    trainer.inner_iter = int(state["inner_iter"])
    trainer.iter = int(state["iteration"])
    trainer.nonfinite_total = int(state.get("nonfinite_total", 0))
    trainer.load_hooks_state(state["hooks"] if "hooks" in state else _hooks_state_of_older_format(state))
    set_rng_state(state["rng"])


def _hooks_state_of_older_format(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Checkpoints written before hooks saved their own state kept the evaluations and the best metric at the top."""
    hooks: dict[str, dict[str, Any]] = {}
    if state.get("eval_history"):
        hooks["EvalHook"] = {"history": list(state["eval_history"])}
    if state.get("best_metric") is not None:
        hooks["CheckpointHook"] = {"best": state["best_metric"]}
    return hooks


def find_resume_file(resume: str | None, run_dir: str | Path) -> Path | None:
    """The checkpoint that ``resume`` points to: ``auto`` -> ``<run_dir>/checkpoints/last.pth`` when it exists."""
    if not resume:
        return None
    if str(resume).lower() == "auto":
        last = Path(run_dir) / "checkpoints" / "last.pth"
        if last.is_file():
            return last
        logger.info("resume=auto: no checkpoint in %s, starting from scratch", last.parent)
        return None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such file")
    return path


def agree_resume(resume: str | None, run_dir: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The resume file global rank 0 finds for ``resume`` (:func:`find_resume_file`) and its state, read on this rank.

    Every rank restores the state itself, after DDP has synced the initial weights, so every rank must read
    the very file rank 0 chose: only rank 0 writes checkpoints, and a node without the run directory on a
    shared filesystem would start from scratch (or from another copy) and train out of step with the others.
    Each rank reads the file and the ranks compare what they read (epoch and iteration); when any rank
    cannot read it, or read another copy, every rank stops with the same :class:`CheckpointError`.
    A collective: call it on every rank.
    """
    decision: tuple[str | None, str | None] = (None, None)
    if comm.is_main_process():
        try:
            found = find_resume_file(resume, run_dir)
            decision = (None if found is None else str(found), None)
        except CheckpointError as exc:
            decision = (None, str(exc))
    path, error = comm.broadcast_object(decision)
    if error is not None:
        raise CheckpointError(error)
    if path is None:
        return None, None
    state: dict[str, Any] | None = None
    try:
        state = load_training_state(path)
        seen: tuple[Any, ...] = ("read", state.get("epoch"), state.get("iteration"))
    except (CheckpointError, OSError) as exc:
        seen = ("error", str(exc))
    views = comm.all_gather_object(seen)
    if views[0][0] == "error":
        raise CheckpointError(f"resume: cannot read {path}: {views[0][1]}")
    unreadable = [rank for rank, view in enumerate(views) if view[0] == "error"]
    if unreadable:
        raise CheckpointError(f"resume needs {path} on every node: ranks {unreadable} cannot read it; "
                              "put the run directory on a shared filesystem or copy it")
    differing = [rank for rank, view in enumerate(views) if view != views[0]]
    if differing:
        raise CheckpointError(f"resume needs the same {path} on every node: ranks {differing} read another copy "
                              f"(epoch, iteration {views[differing[0]][1:]} instead of rank 0's {views[0][1:]}); "
                              "put the run directory on a shared filesystem or copy it")
    return Path(path), state


def save_training_state(state: dict[str, Any], path: str | Path) -> Path:
    path = save_checkpoint(state, path)
    logger.info("saved checkpoint %s (epoch %d, iteration %d)", path, state["epoch"], state["iteration"])
    return path


def load_training_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    return load_checkpoint(path, trust_pickle=False, map_location=map_location)
