"""Training checkpoints: full state for exact resume, written atomically."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.engine import comm
from solo_npu.engine.trainer import epoch_number
from solo_npu.runtime import accelerator_rng_states, load_grad_scaler_state, set_accelerator_rng_states

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


@dataclass(frozen=True)
class Layout:
    """How a run cuts its data into steps: ``world_size`` ranks x ``batch_size`` images per rank (the total batch)
    and ``iters_per_epoch`` steps per epoch. ``None``: not known (a checkpoint written before layouts were recorded).
    """

    world_size: int | None = None
    batch_size: int | None = None
    total_batch: int | None = None
    iters_per_epoch: int | None = None

    def __str__(self) -> str:
        parts = [] if self.total_batch is None else [f"total batch {self.total_batch}"]
        if self.iters_per_epoch is not None:
            parts.append(f"{self.iters_per_epoch} iterations per epoch")
        if self.world_size is None or self.batch_size is None:
            split = "layout not recorded" if self.batch_size is None else f"{self.batch_size} images per rank"
            return f"{split} ({', '.join(parts)})" if parts else split
        ranks = f"{self.world_size} rank{'s' if self.world_size != 1 else ''}"
        images = f"{self.batch_size} image{'s' if self.batch_size != 1 else ''}"
        return f"{ranks} x {images} ({', '.join(parts)})"


def layout_of(trainer: Any) -> Layout:
    """The layout ``trainer`` runs with on the current process group."""
    world, total = comm.get_world_size(), int(trainer.images_per_step)
    return Layout(world, total // world, total, int(trainer.iters_per_epoch))


def train_images_of(trainer: Any) -> int | None:
    """The number of images ``trainer`` draws its batches from (its loader's dataset); ``None``: not known."""
    try:
        return len(trainer.data_loader.dataset)
    except (AttributeError, TypeError):  # a loader without a dataset, a dataset without a length
        return None


def training_state(trainer: Any, schedule: Any = None, config: dict | None = None,
                   extra: dict | None = None) -> dict[str, Any]:
    """Everything needed to continue ``trainer`` exactly where it is, its hooks' state included (``hooks``), the
    layout its counters are in (``layout``: world size, per-rank and total batch, iterations per epoch) and the
    number of images of its training set (``train_images``)."""
    return {
        "format": FORMAT,
        "layout": asdict(layout_of(trainer)),
        "train_images": train_images_of(trainer),
        "model": unwrap(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "scheduler": schedule.state_dict() if schedule is not None else {},
        "epoch": trainer.epoch,
        "inner_iter": trainer.inner_iter,  # sampler position inside the epoch
        "epoch_number": trainer.epoch_number,  # what the logs and epoch_N.pth call it (Trainer.epoch_number)
        # stopped after the epoch's last step, before its end (evaluation, epoch checkpoint): the resume runs it
        "epoch_end_pending": bool(getattr(trainer, "epoch_end_pending", False)),
        "iteration": trainer.iter,
        "nonfinite_total": trainer.nonfinite_total,
        "nonfinite_in_row": trainer.nonfinite_in_row,  # a resume keeps counting toward train.max_nonfinite
        "hooks": trainer.hooks_state_dict(),
        "rng": rng_state(),
        "config": config or {},
        **(extra or {}),
    }


def resume_model_mismatch(state: Mapping[str, Any], model: nn.Module, path: str | Path | None,
                          model_cfg: Any = None) -> str:
    """The line for a resume file whose weights ``model`` refused: how many tensors differ in shape (the first
    named), are the model's alone or the file's alone, and what rebuilds the model of the file's run
    (:func:`~solo_npu.checkpoints.convert.trained_model_hint`: its ``model=`` choice and settings, against
    ``model_cfg``, this run's model config)."""
    from solo_npu.checkpoints.convert import few_keys, trained_model_hint, unshared_keys

    own, weights = model.state_dict(), state["model"]
    shaped = [k for k in weights if k in own and tuple(own[k].shape) != tuple(weights[k].shape)]
    missing, unexpected = unshared_keys(own, weights)
    parts = []
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} of other shapes, e.g. {k}: file {tuple(weights[k].shape)}, model "
                     f"{tuple(own[k].shape)}")
    if missing:
        parts.append(f"{len(missing)} of the model's not in the file {few_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's not in the model {few_keys(unexpected)}")
    return (f"{path or 'the resume file'}: its weights do not fit this run's model ({'; '.join(parts)})"
            f"{trained_model_hint(state, model_cfg)}")


def restore_training_state(trainer: Any, state: dict[str, Any], schedule: Any = None, scale_lr: bool = True,
                           path: str | Path | None = None, model_cfg: Any = None) -> None:
    """Load a ``training_state`` dict into ``trainer`` (model, optimiser, scaler, schedule, counters, hooks, RNG).

    Register the hooks first: each takes its own state back (:meth:`~solo_npu.engine.trainer.Trainer.load_hooks_state`).
    A checkpoint of another layout or another number of iterations per epoch (:func:`resume_plan`) continues at
    the same point of its epoch in this run's iterations, its schedule's iteration counts converted and, with
    ``scale_lr`` (``optim.auto_scale_lr``), its learning rate scaled by the total batch; one WARNING says what was
    done. Every resume puts a ``resume`` record in the trainer's storage (``checkpoint_iteration``: the checkpoint's
    iteration, in its own count; ``renumber``: :attr:`ResumePlan.renumber` as a list, ``None`` for an exact
    resume), from which the writers leave out what they wrote after the checkpoint and, when converted, renumber
    the rest (:class:`~solo_npu.engine.hooks.LoggingHook`). A position that cannot be converted raises
    :class:`CheckpointError` before anything is loaded.
    ``path``: the file ``state`` was read from, named by the errors; ``model_cfg``: this run's model config, for
    the line of a file another model wrote (:func:`resume_model_mismatch`).
    """
    check_training_state(state, path)
    plan = resume_plan(state, layout_of(trainer), scale_lr, train_images_of(trainer), path)
    try:
        unwrap(trainer.model).load_state_dict(state["model"])
    except RuntimeError:  # another model than the one that wrote the file: its tensors do not fit
        raise CheckpointError(resume_model_mismatch(state, unwrap(trainer.model), path, model_cfg)) from None
    wanted_groups = [{k: g[k] for k in _GROUP_KEYS if k in g} for g in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(state["optimizer"])  # which also sets the checkpoint's momentum, decay
    _keep_configured_groups(trainer.optimizer, wanted_groups)
    if state.get("scaler"):  # saved by any scaler class: torch_npu's reads a "dynamic" that PyTorch's do not write
        load_grad_scaler_state(trainer.scaler, state["scaler"])
        static, saved = getattr(trainer.scaler, "static_scale", None), state["scaler"].get("scale")
        if static is not None and saved is not None and float(saved) != static and comm.is_main_process():
            logger.warning("resume: the checkpoint's loss scale is %g; this run's amp.loss_scale=%g applies",
                           float(saved), static)
    hooks = state["hooks"] if "hooks" in state else _hooks_state_of_older_format(state)
    trainer.epoch, trainer.inner_iter, trainer.iter = plan.position
    # (a file without the entry was written at the epoch's end or within it: nothing pending)
    trainer.epoch_end_pending = bool(state.get("epoch_end_pending")) and trainer.inner_iter >= trainer.iters_per_epoch
    if schedule is not None and state.get("scheduler"):
        wanted = schedule.state_dict()  # this run's config
        schedule.load_state_dict(state["scheduler"])
        plan.convert_schedule(schedule)
        converted = schedule.state_dict()
        # warmup_iters is converted to keep the same point of the warm-up; the config gives it in iterations
        changed = schedule_changes({**converted, "warmup_iters": int(state["scheduler"]["warmup_iters"])}, wanted)
        if changed:  # the config names another schedule: it applies from here on, as its config.yaml says
            schedule.load_state_dict({**converted, **{k: wanted[k] for k in changed}})
            if comm.is_main_process():
                logger.warning("resume: this run's schedule differs from the checkpoint's (%s); the config's applies "
                               "from iteration %d", "; ".join(changed.values()), plan.position[2])
    trainer.nonfinite_total = int(state.get("nonfinite_total", 0))
    trainer.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
    trainer.load_hooks_state(plan.convert_hooks(hooks))
    # The records written after the checkpoint are done again; converted, the rest counts its iterations (LoggingHook).
    trainer.storage.put_record("resume", {"checkpoint_iteration": int(state["iteration"]),
                                          "renumber": None if plan.renumber is None else list(plan.renumber)})
    set_rng_state(state["rng"])
    if plan.message and comm.is_main_process():
        logger.warning("%s", plan.message)


# The optimiser settings a param group carries that this run's config sets (optim.*), besides the LR (the schedule's).
_GROUP_KEYS = ("momentum", "weight_decay", "nesterov", "dampening", "betas")


def _same(a: Any, b: Any) -> bool:
    """Two param-group values alike (``betas`` is a tuple in a group, a list in a checkpoint read back)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _keep_configured_groups(optimizer: torch.optim.Optimizer, wanted: list[dict[str, Any]]) -> None:
    """Put back the config's momentum, weight decay, ... that ``load_state_dict`` replaced by the checkpoint's, with
    one WARNING when they differed (the momentum buffers are the checkpoint's either way)."""
    changed = sorted({f"optim.{k} {g.get(k)} -> {w[k]}" for g, w in zip(optimizer.param_groups, wanted)
                      for k in w if not _same(g.get(k), w[k])})
    for group, values in zip(optimizer.param_groups, wanted):
        group.update(values)
    if changed and comm.is_main_process():
        logger.warning("resume: this run's optimiser settings differ from the checkpoint's (%s); the config's apply",
                       "; ".join(changed))


# The schedule's settings and the config keys that set them (WarmupStepSchedule.state_dict).
_SCHEDULE_KEYS = {"base_lr": "LR (optim.base_lr, scaled by the total batch)", "lr_steps": "optim.lr_steps",
                  "gamma": "optim.gamma", "warmup_iters": "optim.warmup_iters", "warmup_ratio": "optim.warmup_ratio",
                  "policy": "optim.policy", "min_lr_ratio": "optim.min_lr_ratio",
                  "total_iters": "cosine length (train.epochs)"}


def schedule_changes(loaded: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, str]:
    """``{key: "<setting> <checkpoint's> -> <config's>"}`` for each schedule setting the two differ in (the
    checkpoint's LR and cosine length converted to this run's batch and iterations; ``total_iters`` only matters
    for the cosine policy)."""
    changes = {}
    for key, name in _SCHEDULE_KEYS.items():
        if key == "total_iters" and wanted.get("policy") != "cosine":
            continue
        a, b = loaded.get(key), wanted.get(key)
        same = math.isclose(float(a), float(b), rel_tol=1e-9) if isinstance(b, float) and a is not None else a == b
        if not same:
            changes[key] = f"{name} {a} -> {b}"
    return changes


def check_training_state(state: Any, path: str | Path | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a :func:`training_state` of this format: weights alone (a
    state dict, a converted or an mmdet file) cannot be resumed. ``path``: the file it was read from."""
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return
    if not isinstance(state, dict):
        holds = f"it holds a {type(state).__name__}"
    elif "format" in state:
        holds = f"its format is {state['format']!r}, this version resumes {FORMAT!r}"
    else:
        keys = [str(k) for k in list(state)[:5]]
        holds = f"it has no format entry; keys {keys}{' ...' if len(state) > 5 else ''}"
    where = "the state" if path is None else f"resume={path}"
    start = "checkpoint=PATH" if path is None else f"checkpoint={path}"
    raise CheckpointError(f"not a training checkpoint of this project: {where} ({holds}); use {start} to start "
                          "from its weights")


@dataclass(frozen=True)
class ResumePlan:
    """Where a resumed run continues: ``position`` (epoch, inner_iter, iteration) in this run's iterations.

    ``renumber``: (iterations per epoch of the checkpoint, of this run) when iteration counts are converted to the
    same fraction of an epoch, else ``None``; ``lr_factor`` scales the schedule's LR; ``message``: the WARNING.
    """

    position: tuple[int, int, int]
    renumber: tuple[int, int] | None = None
    lr_factor: float = 1.0
    message: str = ""

    def iterations(self, count: int) -> int:
        """``count`` iterations of the checkpoint's layout in this run's (rounded half up)."""
        if self.renumber is None:
            return count
        old, new = self.renumber
        return (2 * count * new + old) // (2 * old)

    def convert_schedule(self, schedule: Any) -> None:
        """The loaded schedule in this run's iterations and total batch (warm-up, cosine length, LR)."""
        schedule.warmup_iters = self.iterations(schedule.warmup_iters)
        schedule.total_iters = self.iterations(schedule.total_iters)
        schedule.base_lr *= self.lr_factor
        schedule.last_lr *= self.lr_factor

    def convert_hooks(self, hooks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The hooks' iteration stamps in this run's iterations, none past the resumed iteration, so that none equals
        an iteration to come: ``EvalHook`` (``evaluated_at``, each evaluation's ``iteration``) and
        ``CheckpointHook`` (``compared_at``) compare them with later iterations."""
        if self.renumber is None:
            return hooks

        def stamp(count: Any) -> int:
            return min(self.iterations(int(count)), self.position[2])

        converted = {}
        for key, hook_state in hooks.items():
            hook_state = dict(hook_state)
            for name in ("evaluated_at", "compared_at"):
                if hook_state.get(name) is not None:
                    hook_state[name] = stamp(hook_state[name])
            if isinstance(hook_state.get("history"), list):
                hook_state["history"] = [{**e, "iteration": stamp(e["iteration"])}
                                         if isinstance(e, dict) and "iteration" in e else e
                                         for e in hook_state["history"]]
            converted[key] = hook_state
        return converted


def saved_layout(state: dict[str, Any]) -> Layout:
    """The layout a checkpoint was written in. Checkpoints written before layouts were recorded give what their
    config and schedule tell: the per-rank batch (``train.batch_size``) and, when the LR was scaled by the total
    batch (``optim.auto_scale_lr``), the total batch the schedule's LR was set for."""
    if state.get("layout"):
        return Layout(**{k: None if v is None else int(v) for k, v in state["layout"].items()})
    config = state.get("config") or {}
    train, optim = config.get("train") or {}, config.get("optim") or {}
    batch = train.get("batch_size")
    total = None
    lr = (state.get("scheduler") or {}).get("base_lr")
    if optim.get("auto_scale_lr") and optim.get("base_lr") and optim.get("base_batch_size") and lr:
        images = float(lr) * float(optim["base_batch_size"]) / float(optim["base_lr"])
        total = round(images) if round(images) >= 1 and abs(images - round(images)) < 1e-6 else None
    world = total // int(batch) if total is not None and batch and total % int(batch) == 0 else None
    return Layout(world, None if batch is None else int(batch), total)


def resume_plan(state: dict[str, Any], now: Layout, scale_lr: bool = True,
                train_images: int | None = None, path: str | Path | None = None) -> ResumePlan:
    """Where a checkpoint of ``state`` continues in a run of layout ``now`` on ``train_images`` training images.

    The same layout, epoch length and training set continue where they stopped. Another layout or another number
    of iterations per epoch (a training set with images added or removed, other batches of the same images)
    continues at the same point of the interrupted epoch: with another number of iterations per epoch, the
    position and every iteration count (counter, warm-up, cosine length, the hooks' stamps) are converted to the
    same fraction of an epoch, so the schedule keeps its course in epochs; with another total batch the LR is
    scaled with it (``scale_lr``). Another number of training images in as many iterations per epoch continues
    as saved. The images from there on are not the uninterrupted run's (one WARNING). A checkpoint that
    does not record its layout continues as saved, unless its schedule shows another total batch (then
    :class:`CheckpointError`: its position cannot be converted); one that does not record its number of training
    images is compared by its layout and iterations per epoch alone. ``path``: the file of ``state``, named by
    the error.
    """
    saved = saved_layout(state)
    epoch, inner, iteration = int(state["epoch"]), int(state["inner_iter"]), int(state["iteration"])
    position = (epoch, inner, iteration)
    saved_images = None if state.get("train_images") is None else int(state["train_images"])
    same_layout = (saved.batch_size == now.batch_size and saved.world_size in (None, now.world_size)
                   and saved.total_batch in (None, now.total_batch))
    same_epoch = saved.iters_per_epoch in (None, now.iters_per_epoch)
    other_images = None not in (saved_images, train_images) and saved_images != train_images
    if saved.batch_size is None or (same_layout and same_epoch and not other_images):
        return ResumePlan(position)  # the same layout and training set, as far as the checkpoint tells
    same_total = saved.total_batch == now.total_batch
    if saved.iters_per_epoch is None:  # written before layouts were recorded
        if saved.total_batch is not None and not same_total:
            raise CheckpointError(
                f"resume: the checkpoint records no layout and its schedule's LR is for total batch "
                f"{saved.total_batch}, this run has {now}: the iterations of {path or 'the checkpoint'} cannot be "
                f"converted; resume with total batch {saved.total_batch} (ranks x train.batch_size) or start a new "
                f"schedule from its weights with checkpoint={path or 'PATH'}")
        told = ("the same total batch (from its LR)" if same_total else
                "a total batch that cannot be told (its LR was not scaled by it)")
        return ResumePlan(position, message=(
            f"resume on another layout: the checkpoint records no layout ({saved}, {told}), this run has {now}; "
            f"continuing as saved at iteration {iteration} (epoch {epoch_number(epoch, inner)}, {_done(inner, None)}), "
            "which is right only "
            "for the same total batch; the images from here on differ from those of the uninterrupted run "
            "(not an exact resume)"))
    old_ipe, new_ipe = int(saved.iters_per_epoch), int(now.iters_per_epoch)
    renumber = None if old_ipe == new_ipe else (old_ipe, new_ipe)
    plan = ResumePlan(position, renumber)
    # Inside the epoch at most its last batch, so that the epoch still ends (evaluation, epoch_N.pth).
    new_inner = new_ipe if inner >= old_ipe else min(plan.iterations(inner), max(new_ipe - 1, 0))
    new_position = (epoch, new_inner, plan.iterations(iteration - inner) + new_inner)
    lr_factor = now.total_batch / saved.total_batch if scale_lr and not same_total else 1.0
    changed, clauses, why = _what_changed(same_layout, saved_images, train_images)
    what = [f"resume on another {changed}: the checkpoint's {saved}, this run's {now}", *clauses]
    if renumber is None:
        what.append(f"continuing at iteration {iteration} (epoch {epoch_number(epoch, inner)}, "
                    f"{_done(inner, new_ipe)})")
    else:
        warmup = int((state.get("scheduler") or {}).get("warmup_iters", 0))
        what.append(f"continuing at the same point of epoch {epoch_number(epoch, inner)}: iteration {new_position[2]} "
                    f"({_done(new_inner, new_ipe)}) instead of {iteration} ({_done(inner, old_ipe)}), "
                    f"the schedule's iteration counts converted to {new_ipe} per epoch (warm-up {warmup} -> "
                    f"{plan.iterations(warmup)} iterations)")
    if not same_total:
        what.append(f"the LR scaled by {now.total_batch}/{saved.total_batch} (optim.auto_scale_lr)" if scale_lr else
                    "the LR kept (optim.auto_scale_lr=false)")
    what.append(f"the images from here on differ from those of the uninterrupted run (not an exact resume{why})")
    return ResumePlan(new_position, renumber, lr_factor, "; ".join(what))


def _what_changed(same_layout: bool, saved_images: int | None,
                  images: int | None) -> tuple[str, list[str], str]:
    """What differs from the checkpoint's run besides the layout: (what the WARNING names, its clauses on the
    training set, why the resume is not exact). Called when the layout or the number of iterations per epoch
    differs, or the number of training images."""
    if None not in (saved_images, images) and saved_images != images:
        clause = f"the training set has {images} images, the checkpoint's run had {saved_images}"
        return ("training set" if same_layout else "layout and training set"), [clause], ": the training set changed"
    if not same_layout:
        return "layout", [], ""  # the layout accounts for another number of iterations per epoch
    if images is not None and saved_images == images:
        return "epoch length", [f"the same {images} training images in other batches (another "
                                "data.group_by_aspect_ratio, or other images of as many)"], ": the batches changed"
    unknown = ("the checkpoint does not record its number of training images" if saved_images is None else
               "this run's number of training images is not known")
    return "epoch length", [unknown], ": the training set or its batching changed"


def _done(inner: int, iters_per_epoch: int | None) -> str:
    return f"{inner} of {iters_per_epoch} batches done" if iters_per_epoch else f"{inner} batches of the epoch done"


def _hooks_state_of_older_format(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Checkpoints written before hooks saved their own state kept the evaluations and the best metric at the top."""
    hooks: dict[str, dict[str, Any]] = {}
    if state.get("eval_history"):
        hooks["EvalHook"] = {"history": list(state["eval_history"])}
    if state.get("best_metric") is not None:
        hooks["CheckpointHook"] = {"best": state["best_metric"]}
    return hooks


def find_resume_file(resume: str | None, run_dir: str | Path, log: bool = True) -> Path | None:
    """The checkpoint that ``resume`` points to: ``auto`` -> ``<run_dir>/checkpoints/last.pth`` when it exists
    (``log``: say when there is none)."""
    if not resume:
        return None
    if str(resume).lower() == "auto":
        last = Path(run_dir) / "checkpoints" / "last.pth"
        if last.is_file():
            return last
        if log:
            logger.info("resume=auto: no checkpoint in %s, starting from scratch", last.parent)
        return None
    path = Path(resume)
    if path.is_dir():  # a run directory, or its checkpoints/ folder
        last = next((c for c in (path / "checkpoints" / "last.pth", path / "last.pth") if c.is_file()), None)
        run = last.parent.parent if last is not None and last.parent.name == "checkpoints" else None
        hint = (f"resume={last}" + (f", or resume=auto run_dir={run}" if run is not None else "") if last is not None
                else "give <run directory>/checkpoints/last.pth, or resume=auto run_dir=<the run directory>")
        raise CheckpointError(f"resume={resume} is a directory, not a checkpoint file: {hint}")
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such file (resume=auto run_dir=<the run directory> continues "
                              "a run from its checkpoints/last.pth)")
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
        check_training_state(state, path)
        seen: tuple[Any, ...] = ("read", state.get("epoch"), state.get("iteration"))
    except (CheckpointError, OSError) as exc:
        seen = ("error", str(exc))
    views = comm.all_gather_object(seen)
    if views[0][0] == "error":  # the messages of load_checkpoint and check_training_state name the file
        detail = views[0][1]
        raise CheckpointError(detail if str(path) in detail else f"resume: cannot read {path}: {detail}")
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
    logger.info("saved checkpoint %s (epoch %d, iteration %d)", path, state.get("epoch_number", state["epoch"]),
                state["iteration"])
    return path


def load_training_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    return load_checkpoint(path, trust_pickle=False, map_location=map_location)
