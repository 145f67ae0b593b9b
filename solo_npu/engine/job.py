"""The per-process training / evaluation job that ``train.py`` launches on every rank."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from solo_npu.config import CONF_DIR
from solo_npu.config.shapes import checkpoint_notices, lift_fixed_shapes
from solo_npu.config.values import MODES
from solo_npu.engine import comm, interrupts
from solo_npu.engine.backbone_init import backbone_init_file, candidate_files
from solo_npu.engine.checkpointer import (
    agree_resume,
    find_resume_file,
    restore_training_state,
    training_state,
    unwrap,
)
from solo_npu.engine.evaluate import evaluate
from solo_npu.engine.finetune import (
    checkpoint_position,
    describe_checkpoint,
    freeze_backbone,
    load_weights,
    set_num_classes,
)
from solo_npu.engine.hooks import (
    CheckpointHook,
    CountsHook,
    EvalHook,
    LoggingHook,
    LRHook,
    ThroughputHook,
    count_summary,
    evaluated_at,
    gather_fault_counts,
)
from solo_npu.engine.interrupts import FinalPhase, InterruptedMidStep
from solo_npu.engine.logs import setup_logging
from solo_npu.engine.optim import WarmupStepSchedule, build_optimizer, scaled_lr, schedule_notice
from solo_npu.engine.trainer import HookBase, NonFiniteLossError, Trainer, stop_written
from solo_npu.engine.writers import default_writers, use_progress_bar
from solo_npu.models.inference import prepare_for_inference
from solo_npu.runtime import DeviceInfo, amp_notice, ddp_options, make_grad_scaler, seed_everything
from solo_npu.utils.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
# The experiment presets of this checkout (conf/experiment), named in hints for a checkpoint of another experiment.
EXPERIMENTS_DIR = CONF_DIR / "experiment"


def _workers(cfg: DictConfig) -> int:
    workers = cfg.train.get("workers")
    return int(cfg.data.get("num_workers", 0) if workers is None else workers)


def _build_model(cfg: DictConfig, num_classes: int, pretrained: str | None = None) -> nn.Module:
    """The model of ``cfg.model`` with ``num_classes`` set from the dataset and ``pretrained`` (the
    resolved ImageNet file, or ``None``) in place of ``model.pretrained``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    set_num_classes(model_cfg, num_classes)
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = pretrained
    from solo_npu.models import build_model

    return build_model(OmegaConf.create(model_cfg))


def _place(model: nn.Module, cfg: DictConfig, info: DeviceInfo) -> nn.Module:
    model.to(info.device)
    if cfg.runtime.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    return model


def _eval_setup(cfg: DictConfig, info: DeviceInfo, val_set: Any = None,
                class_names: Sequence[str] | None = None) -> tuple[Any, Any, Any]:
    """The validation split (its classes ``class_names`` when given, by name), its loader and evaluator."""
    from solo_npu.data import build_dataloader, build_dataset, ensure_synthetic
    from solo_npu.evaluation import CocoEvaluator

    if val_set is None:
        ensure_synthetic(cfg.data)
        val_set = build_dataset(cfg.data, "val", seed=int(cfg.runtime.seed), class_names=class_names)
    world = comm.get_world_size()
    loader = build_dataloader(cfg.data, "val", batch_size=int(cfg.train.eval_batch_size), distributed=world > 1,
                              rank=comm.get_rank(), world_size=world, seed=int(cfg.runtime.seed),
                              num_workers=_workers(cfg), dataset=val_set)
    return val_set, loader, CocoEvaluator(val_set.coco, val_set.label_to_cat)


def _starts_from(cfg: Any, resume_file: Path | None) -> str | None:
    if resume_file is not None:
        return str(resume_file)
    return str(cfg["checkpoint"]) if cfg.get("checkpoint") else None


def _env_int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ.get(key, "0") or 0)
    except ValueError:
        return 0


def run_dir_per_attempt(cfg: Any, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the run directory is a timestamp of its own for each torchrun attempt: no ``run_dir=``, no
    ``$SOLO_RUN_DIR`` and no rendezvous id (``--rdzv-id`` defaults to ``none`` without ``--standalone``;
    see :func:`~solo_npu.config.schema.resolve_run_dir`)."""
    env = os.environ if environ is None else environ
    return (not cfg.get("run_dir") and not env.get("SOLO_RUN_DIR")
            and env.get("TORCHELASTIC_RUN_ID", "") in ("", "none"))


def attempt_resume(cfg: Any, run_dir: Path, environ: Mapping[str, str] | None = None,
                   log: bool = True) -> str | None:
    """The ``resume`` setting of this attempt of the run.

    torch's elastic agent restarts a failed worker group with the same environment plus
    ``TORCHELASTIC_RESTART_COUNT`` (torch/distributed/elastic/agent/server/local_elastic_agent.py). A
    restarted attempt continues from the run directory's ``checkpoints/last.pth`` when there is one, as
    ``resume=auto`` does, instead of starting over and overwriting it; otherwise ``cfg["resume"]`` stands.
    Where each attempt gets a new timestamped run directory (:func:`run_dir_per_attempt`) nothing can be
    found: a WARNING says so (also on the first attempt of a run allowed restarts).
    """
    env = os.environ if environ is None else environ
    resume = cfg.get("resume")
    restarts, max_restarts = _env_int(env, "TORCHELASTIC_RESTART_COUNT"), _env_int(env, "TORCHELASTIC_MAX_RESTARTS")
    if restarts <= 0 and max_restarts <= 0:
        return resume
    if run_dir_per_attempt(cfg, env):
        if log:
            what = (f"torchrun restart {restarts}: this attempt starts over in a new run directory {run_dir}, the "
                    "earlier attempts' checkpoints are not resumed" if restarts > 0 else
                    f"torchrun --max_restarts={max_restarts}: a restarted attempt will start over in a new run "
                    "directory")
            logger.warning("%s; give run_dir=... (or a unique --rdzv-id) so that restarts resume the run", what)
        return resume
    last = Path(run_dir) / "checkpoints" / "last.pth"
    if restarts <= 0 or not last.is_file():
        return resume
    if log:
        logger.info("torchrun restart %d: resuming from %s, the last checkpoint of the earlier attempts", restarts,
                    last)
    return str(last)


def check_start(cfg: dict[str, Any], run_dir: Path) -> None:
    """Checks a launcher runs once before any worker starts, so that a run that cannot start as
    configured stops with one line (:class:`~solo_npu.config.values.ConfigValueError`,
    :class:`~solo_npu.data.DatasetNotFoundError`,
    :class:`~solo_npu.engine.backbone_init.BackboneInitError`)."""
    from solo_npu.config.values import check_eval_preprocessing, check_trainable, check_values
    from solo_npu.data import check_dataset_files
    from solo_npu.engine.launch import check_launcher_env, check_multinode

    check_values(cfg)
    check_launcher_env()
    check_multinode(cfg)
    _check_model_classes(cfg)
    choice = _model_choice()
    check_trainable(cfg, choice)
    check_eval_preprocessing(cfg, choice)
    mode = cfg.get("mode", "train")
    if not cfg.get("checkpoint") and (mode == "eval" or (cfg.get("finetune") or {}).get("enabled")):
        from solo_npu.config.values import ConfigValueError

        what, use = ("mode=eval", "evaluate") if mode == "eval" else ("finetune.enabled=true", "start from")
        raise ConfigValueError(f"{what} needs checkpoint=PATH (the weights to {use}: a checkpoint of this project or "
                               "one the converters read)")
    if mode == "train" and cfg.get("eval_detections"):
        logger.warning("eval_detections=%s is written by an evaluation run (+experiment=eval checkpoint=PATH), not by "
                       "training: this run writes no detections file", cfg["eval_detections"])
    check_dataset_files(cfg["data"], ("train", "val") if mode == "train" else ("val",))  # training evaluates too
    if mode == "train":
        if (str(cfg.get("resume") or "").lower() == "auto" and run_dir_per_attempt(cfg)
                and not (run_dir / "checkpoints" / "last.pth").is_file()):
            logger.warning("resume=auto without run_dir: this run has a new run directory (%s), with nothing to "
                           "resume, and starts from scratch; resume=auto run_dir=<the run's directory> continues a "
                           "run", run_dir)
        resume = attempt_resume(cfg, run_dir, log=False)
        # the run's own look (train) says when resume=auto finds nothing
        backbone_init_file(cfg, _starts_from(cfg, find_resume_file(resume, run_dir, log=False)))


def _check_model_classes(cfg: dict[str, Any]) -> None:
    """``model.num_classes`` given on the command line: train.py builds the model for its dataset's classes
    (:func:`set_num_classes`), so another count than ``data.num_classes`` is one line, and a count where the data
    config names none is a WARNING that says it is not read (it was replaced in silence)."""
    from hydra.core.hydra_config import HydraConfig

    from solo_npu.config.values import ConfigValueError

    if not HydraConfig.initialized():
        return
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task if "=" in o}
    if "model.num_classes" not in keys:
        return
    wanted, data_classes = (cfg.get("model") or {}).get("num_classes"), (cfg.get("data") or {}).get("num_classes")
    if data_classes is None:
        logger.warning("model.num_classes=%s is not read: train.py builds the model for its dataset's classes "
                       "(the annotation file's categories, or data.class_names)", wanted)
    elif wanted is None or int(wanted) != int(data_classes):
        raise ConfigValueError(f"model.num_classes={wanted}: train.py builds the model for its dataset's classes "
                               f"(data.num_classes={data_classes}); set data.num_classes (with data.class_names or an "
                               "annotation file of those classes) instead")


def _model_choice() -> str | None:
    """The ``model=`` choice of the Hydra run composing this job (``fcos``); ``None`` outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("model")
    return str(choice) if choice else None


def _backbone_init(cfg: DictConfig, starts_from: str | None) -> str | None:
    """The ImageNet file of this training run (logged), or ``None``. The file was read and checked by
    :func:`check_start` before the workers started; here its name is resolved only, and the model reads it."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    path = backbone_init_file(plain, starts_from, read=False)
    value = plain["model"].get("pretrained")
    if starts_from and value not in (None, "auto", "none"):
        logger.info("model.pretrained=%s not read: the weights come from %s", value, starts_from)
    elif path is None and str(value).lower() == "auto" and not starts_from:
        backbone = plain["model"].get("backbone") or {}
        files = ", ".join(str(p) for p in candidate_files(int(backbone.get("depth", 50)), plain["data"].get("root"),
                                                          str(backbone.get("style", "pytorch"))))
        logger.warning("model.pretrained=auto: none of %s exists; the backbone starts from random weights "
                       "(model.pretrained=none says that on purpose)", files)
    return path


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    if comm.is_main_process():
        write_json_atomic(run_dir / "summary.json", summary, indent=2, end="\n")


def run_job(cfg_dict: dict[str, Any], run_dir: Path, info: DeviceInfo) -> dict[str, Any]:
    """Entry point of every worker: set up logging and seeds, then train or evaluate."""
    cfg = OmegaConf.create(cfg_dict)
    OmegaConf.set_struct(cfg, True)
    rank = comm.get_rank()
    progress_bar = use_progress_bar(str(cfg.train.progress))
    setup_logging(run_dir, rank, progress_bar)
    lifted = lift_fixed_shapes(cfg, info.type)
    if lifted and rank == 0:
        logger.info("runtime.fixed_shapes=npu: the fixed NPU shapes are not used on %s (%s; "
                    "runtime.fixed_shapes=always keeps them)", info.type, " ".join(lifted))
    # A resume into a run directory keeps the config.yaml of the run it continues until its state is restored
    # (train): a resume that fails (another model, another layout) leaves the record of how the run trained as it was.
    keep_config = cfg.mode == "train" and bool(cfg.get("resume")) and (run_dir / "config.yaml").is_file()
    if rank == 0 and not keep_config:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))  # what OmegaConf.save writes
    logger.info("experiment %s: run directory %s, device %s, world size %d", cfg.experiment_name, run_dir, info.device,
                comm.get_world_size())
    seed_everything(int(cfg.runtime.seed), bool(cfg.runtime.deterministic))
    notice = amp_notice(info, bool(cfg.amp.enabled), str(cfg.amp.dtype), cfg.amp.get("loss_scale", "dynamic"))
    if notice and rank == 0:
        logger.warning(notice)
    if cfg.mode == "eval":
        return eval_only(cfg, run_dir, info)
    if cfg.mode != "train":
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    return train(cfg, run_dir, info, progress_bar, write_config=keep_config and rank == 0)


@contextlib.contextmanager
def _trained_model_hint(cfg: DictConfig, ckpt: Any = None):
    """A shape mismatch with a checkpoint of this project names what rebuilds the model it was trained with: the
    model settings its training config has otherwise, and for an evaluation the experiment that run came from
    (``+experiment=[demo,eval]``), where this checkout has it."""
    from solo_npu.checkpoints import CheckpointError, load_checkpoint
    from solo_npu.checkpoints.convert import trained_model_hint

    try:
        yield
    except CheckpointError as exc:
        if "shape mismatch" not in str(exc):
            raise
        if ckpt is None:
            ckpt = load_checkpoint(str(cfg.checkpoint), trust_pickle=bool(cfg.checkpoint_trust_pickle))
        hint = trained_model_hint(ckpt, cfg.model)
        experiment = checkpoint_position(ckpt)["experiment"]
        if (hint and cfg.mode == "eval" and isinstance(experiment, str) and experiment != cfg.experiment_name
                and (EXPERIMENTS_DIR / f"{experiment}.yaml").is_file() and _sets_model(experiment)):
            hint += f", or evaluate it with its experiment's settings: '+experiment=[{_eval_experiments(ckpt)},eval]'"
        raise CheckpointError(f"{exc}{hint}") from exc


def _sets_model(experiment: str) -> bool:
    """Whether conf/experiment/<experiment>.yaml chooses the model (``override /model: ...`` in its defaults): only
    then does evaluating with that experiment rebuild the model its run trained (finetune, 1p and 8p keep
    whatever model= says)."""
    return any(line.strip().startswith("- override /model:")
               for line in (EXPERIMENTS_DIR / f"{experiment}.yaml").read_text().splitlines())


# The device presets; their runs evaluate with +experiment=[1p,...] (one device, the same canvas and precision).
DEVICE_PRESETS = ("1p", "8p", "performance_1p", "performance_8p")


def _eval_experiments(ckpt: Any) -> str:
    """The experiments that evaluate a checkpoint's run as it trained: its own, behind ``1p`` where a device preset
    composed it (its config says ``runtime.fixed_shapes=npu``, which only the presets set): a recipe trained as
    ``[8p,solov2_r50_3x]`` records the recipe's name alone."""
    experiment = checkpoint_position(ckpt)["experiment"]
    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    runtime = (config or {}).get("runtime") if isinstance(config, Mapping) else None
    if experiment in DEVICE_PRESETS:
        return "1p"
    if isinstance(runtime, Mapping) and runtime.get("fixed_shapes") == "npu":
        return f"1p,{experiment}"
    return str(experiment)


def eval_only(cfg: DictConfig, run_dir: Path, info: DeviceInfo) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on the validation split."""
    if not cfg.checkpoint:
        raise ValueError("mode=eval needs checkpoint=PATH (a checkpoint of this project or one the converters read)")
    t0 = time.time()
    from solo_npu.checkpoints import load_checkpoint

    ckpt = load_checkpoint(str(cfg.checkpoint), trust_pickle=bool(cfg.checkpoint_trust_pickle))  # read once
    position = checkpoint_position(ckpt)
    if comm.is_main_process():
        logger.info("%s", describe_checkpoint(str(cfg.checkpoint), position))
    val_set, loader, evaluator = _eval_setup(cfg, info, class_names=_checkpoint_classes(cfg, ckpt))
    model = _build_model(cfg, len(val_set.label_to_cat))
    from solo_npu.evaluation import score_types

    evaluator.iou_types = score_types(model.iou_types)  # box-only models (FCOS, SSD-ResNet34): bbox alone
    with _trained_model_hint(cfg, ckpt):
        report = load_weights(model, str(cfg.checkpoint), str(cfg.checkpoint_source),
                              bool(cfg.checkpoint_trust_pickle), class_names=val_set.class_names,
                              normalize=cfg.data.normalize, loaded=ckpt)
    for notice in checkpoint_notices(report.get("config"), cfg.data, cfg.model.get("name")):
        if comm.is_main_process():
            logger.warning(notice)
    # Frozen BatchNorm folded into the convolutions (and channels-last on the CPU): same outputs, less work.
    prepare_for_inference(model, channels_last=info.inference_channels_last)
    _place(model, cfg, info)
    from solo_npu.data import stop_workers

    try:
        results = evaluate(model, loader, evaluator, info, bool(cfg.amp.enabled), str(cfg.amp.dtype))
    finally:
        stop_workers(loader)
    if not val_set.coco.anns:  # COCOeval's -1: no ground truth to score against
        results = {t: {k: None for k in metrics} for t, metrics in results.items()}
        logger.warning("%s has no annotations (an image-info file, as test-dev's): AP is undefined here; "
                       "eval_detections=FILE writes the detections for an evaluation server", val_set.ann_file)
    # segm_ap is null for a box-only model: it has no masks to score (results and eval.json have no segm)
    summary = {"mode": "eval", "checkpoint": str(cfg.checkpoint), "checkpoint_epoch": position["epoch"],
               "checkpoint_iteration": position["iteration"], "iou_types": list(evaluator.iou_types),
               "segm_ap": results.get("segm", {}).get("AP"), "bbox_ap": results.get("bbox", {}).get("AP"),
               "results": results, "duration_sec": time.time() - t0,
               "world_size": comm.get_world_size(), "device": info.type,
               "data_faults": gather_fault_counts({"val": val_set}, info.device)}
    if cfg.eval_detections:
        summary["detections"] = str(run_dir / str(cfg.eval_detections))  # an absolute path stays as it is
    write_summary(run_dir, summary)
    if comm.is_main_process():
        if cfg.eval_detections:
            evaluator.dump(summary["detections"])
            logger.info("detections written to %s", summary["detections"])
        write_json_atomic(run_dir / "eval.json", results, indent=2, end="\n")
    aps = {t: summary[f"{t}_ap"] for t in evaluator.iou_types}  # the types scored: no segm AP of a box-only model
    logger.info("%s", ", ".join(f"{t} AP {'undefined' if ap is None else f'{ap:.4f}'}" for t, ap in aps.items()))
    return summary


def _checkpoint_classes(cfg: DictConfig, ckpt: Any) -> list[str] | None:
    """The classes to evaluate ``cfg.checkpoint`` on, by name: ``data.class_names`` when set, else the names
    the checkpoint carries when the validation file has each of them (then the labels are the checkpoint's,
    whatever ids or order the file gives its categories), else ``None`` (the file's categories; the loader
    then compares names and classifier size)."""
    from solo_npu.checkpoints.convert import checkpoint_class_names
    from solo_npu.data import AnnotationFileError, split_paths
    from solo_npu.data.coco import category_order, read_annotation_json

    if cfg.data.get("class_names") is not None:
        return [str(n) for n in cfg.data.class_names]
    names = checkpoint_class_names(ckpt)[0]
    if names is None:
        return None
    try:
        ann_file = split_paths(cfg.data, "val")[0]
        category_order(read_annotation_json(ann_file)["categories"], names, str(ann_file))
    except (AnnotationFileError, OSError, KeyError, TypeError):
        return None  # the loaders report what does not fit, with the file's categories
    return list(names)


def _val_classes(train_set: Any) -> list[str] | None:
    """The training split's class names for the validation split to find by name, or ``None`` when two of
    them are the same name (then the splits must give the same ids, :func:`_check_val_classes`)."""
    from solo_npu.data.coco import class_name_key

    names = list(train_set.class_names)
    return names if len({class_name_key(n) for n in names}) == len(names) else None


def _check_val_classes(train_set: Any, val_set: Any) -> None:
    if list(val_set.label_to_cat) != list(train_set.label_to_cat):
        from solo_npu.data import AnnotationFileError

        raise AnnotationFileError(
            f"{train_set.ann_file} repeats a category name, so its classes are matched by id, but "
            f"{val_set.ann_file} has other category ids ({list(val_set.label_to_cat)[:8]} against "
            f"{list(train_set.label_to_cat)[:8]}): give both splits the same categories")


@dataclass
class TrainData:
    """The training split and loader, and the validation split, loader and evaluator."""

    train_set: Any
    loader: Any
    val_set: Any
    val_loader: Any
    evaluator: Any

    @property
    def num_classes(self) -> int:
        return len(self.train_set.label_to_cat)


def train(cfg: DictConfig, run_dir: Path, info: DeviceInfo, progress_bar: bool = False,
          write_config: bool = False) -> dict[str, Any]:
    """Build data, model and optimiser, trainer and hooks; resume when asked; train; write the summary and plots.

    ``progress_bar``: whether the console shows a tqdm bar (decided once, by :func:`use_progress_bar`);
    ``write_config``: write ``config.yaml`` once the resume (if any) is restored (:func:`run_job` left the run's
    own in place until then).
    """
    if cfg.finetune.enabled and not cfg.checkpoint:
        raise ValueError("finetune.enabled=true needs checkpoint=PATH (the weights to start from)")
    t0 = time.time()
    resume = attempt_resume(cfg, run_dir) if comm.is_main_process() else None  # rank 0 decides
    resume_file, resume_state = agree_resume(resume, run_dir)
    data = _build_data(cfg, info)
    model, optimizer, lr = _build_model_and_optimizer(cfg, info, data.num_classes, resume_file,
                                                      data.train_set.class_names)
    trainer, schedule = _build_trainer(cfg, info, model, optimizer, lr, data)
    run_end = RunEnd(run_dir, t0, int(cfg.train.batch_size), info, bool(cfg.train.eval_at_end))
    trainer.register_hooks([run_end, *_build_hooks(cfg, run_dir, info, trainer, schedule, data, progress_bar)])
    if resume_state is not None:
        from solo_npu.checkpoints import CheckpointError
        from solo_npu.checkpoints.convert import check_trained_input

        try:  # the weights only fit the input they were trained on: a resume does not change it silently
            check_trained_input(unwrap(model), resume_state.get("config"), cfg.data.normalize)
        except CheckpointError as exc:
            raise CheckpointError(f"{resume_file}: {exc}") from None
        restore_training_state(trainer, resume_state, schedule, scale_lr=bool(cfg.optim.auto_scale_lr),
                               path=resume_file, model_cfg=cfg.model)
        del resume_state
        # Every rank loaded its own copy after DDP broadcast rank 0's weights: copies that agree on (epoch,
        # iteration) but not on the weights (another file at the same path on one node) would train apart.
        if not comm.params_in_sync(unwrap(model)):
            raise CheckpointError(f"resume needs the same {resume_file} on every node: the ranks loaded different "
                                  "weights from it; put the run directory on a shared filesystem or copy it")
        logger.info("resumed from %s at epoch %d, iteration %d (%d of the epoch's %d steps done)", resume_file,
                    trainer.epoch_number, trainer.iter, trainer.inner_iter if trainer.inner_iter else
                    trainer.iters_per_epoch, trainer.iters_per_epoch)
    if write_config:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    from solo_npu.data import stop_workers

    try:
        try:
            summary = _run(trainer, model, run_dir, run_end)
        finally:  # before the launcher tears the process group down (see stop_workers)
            for loader in (data.loader, data.val_loader):
                stop_workers(loader)
        if comm.get_rank() == 0 and cfg.train.plots:
            from solo_npu.engine.report import save_plots, save_prediction_images

            save_plots(run_dir)
            save_prediction_images(model, data.val_set, run_dir / "predictions", int(cfg.train.vis_images), info)
    finally:
        run_end.final.restore()
    return summary


def _build_data(cfg: DictConfig, info: DeviceInfo) -> TrainData:
    """The splits, their loaders (distributed over the ranks) and the evaluator. Draws nothing from the
    global RNGs, so the model's initial weights do not depend on it."""
    from solo_npu.data import build_dataloader, build_dataset, ensure_synthetic

    world, seed = comm.get_world_size(), int(cfg.runtime.seed)
    ensure_synthetic(cfg.data)
    train_set = build_dataset(cfg.data, "train", seed=seed)
    configured = cfg.data.get("num_classes")
    if configured is not None and int(configured) != len(train_set.label_to_cat) and comm.is_main_process():
        logger.warning("data.num_classes=%d, but the training split has %d classes (%s%s): the model is built for "
                       "those %d (set data.num_classes=%d to say so; data.class_names selects and orders classes by "
                       "name)", int(configured), len(train_set.label_to_cat), ", ".join(train_set.class_names[:5]),
                       " ..." if len(train_set.class_names) > 5 else "", len(train_set.label_to_cat),
                       len(train_set.label_to_cat))
    loader = build_dataloader(cfg.data, "train", batch_size=int(cfg.train.batch_size), distributed=world > 1,
                              rank=comm.get_rank(), world_size=world, seed=seed, num_workers=_workers(cfg),
                              dataset=train_set)
    # The validation split's labels are the training split's classes, found by name: its file may number or
    # order its categories differently, or hold more of them (those are not scored).
    by_name = _val_classes(train_set)
    val_set, val_loader, evaluator = _eval_setup(cfg, info, class_names=by_name)
    if by_name is None:
        _check_val_classes(train_set, val_set)
    if not val_set.coco.anns and (int(cfg.train.eval_interval) > 0 or bool(cfg.train.eval_at_end)):
        from solo_npu.data import AnnotationFileError

        # COCOeval has nothing to score against (-1); its AP would read as 0.0 and pick best.pth on nothing.
        raise AnnotationFileError(
            f"{val_set.ann_file} has no annotations (an image-info file, as test-dev's): a training run cannot "
            "score it; give data.val a file with annotations, or train.eval_interval=0 train.eval_at_end=false")
    return TrainData(train_set, loader, val_set, val_loader, evaluator)


def _build_model_and_optimizer(cfg: DictConfig, info: DeviceInfo, num_classes: int, resume_file: Path | None,
                               class_names: list[str] | None = None) -> tuple[nn.Module, torch.optim.Optimizer, float]:
    """The model (initial weights, frozen parts, device, SyncBN) and its optimiser at the scaled learning rate.
    ``class_names``: the dataset's, compared with a ``checkpoint=`` file's (see :func:`load_weights`)."""
    model = _build_model(cfg, num_classes, _backbone_init(cfg, _starts_from(cfg, resume_file)))
    if cfg.checkpoint and resume_file is None:
        with _trained_model_hint(cfg):
            report = load_weights(model, str(cfg.checkpoint), str(cfg.checkpoint_source),
                                  bool(cfg.checkpoint_trust_pickle),
                                  allow_classifier_change=bool(cfg.finetune.enabled and cfg.finetune.reinit_classifier),
                                  class_names=class_names, normalize=cfg.data.normalize)
        logger.info("initial weights from %s (%s)", cfg.checkpoint,
                    ", ".join(f"{k}: {v if isinstance(v, str) else len(v)}" for k, v in report.items()
                              if isinstance(v, (str, list))))
    if cfg.train.freeze_backbone:
        logger.info("froze %d backbone parameters", freeze_backbone(model))
    _place(model, cfg, info)
    world = comm.get_world_size()
    if cfg.train.sync_bn and world > 1 and info.type == "cpu":  # torch's SyncBatchNorm runs on accelerators only
        if comm.is_main_process():
            logger.warning("train.sync_bn=true: SyncBatchNorm needs CUDA or NPU devices; BatchNorm stays per rank "
                           "on the CPU")
    elif cfg.train.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    total_batch = int(cfg.train.batch_size) * world
    lr = scaled_lr(cfg.optim.base_lr, total_batch, int(cfg.optim.base_batch_size), bool(cfg.optim.auto_scale_lr))
    return model, build_optimizer(model, cfg.optim, info, lr), lr


def _build_trainer(cfg: DictConfig, info: DeviceInfo, model: nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                   data: TrainData) -> tuple[Trainer, WarmupStepSchedule]:
    """The trainer over the model (wrapped in DDP on more than one rank) and the learning-rate schedule."""
    net: nn.Module = model
    if comm.get_world_size() > 1:  # after the optimiser: a fused one rules out gradient bucket views
        net = nn.parallel.DistributedDataParallel(model, **ddp_options(info, optimizer))
    iters_per_epoch = len(data.loader.batch_sampler)
    total_iters = iters_per_epoch * int(cfg.train.epochs)
    if cfg.train.max_iters:
        total_iters = min(total_iters, int(cfg.train.max_iters))
    schedule = WarmupStepSchedule(optimizer, lr, cfg.optim.lr_steps, float(cfg.optim.gamma),
                                  int(cfg.optim.warmup_iters), float(cfg.optim.warmup_ratio),
                                  policy=str(cfg.optim.policy), total_iters=total_iters,
                                  min_lr_ratio=float(cfg.optim.min_lr_ratio))
    notice = schedule_notice(str(cfg.optim.policy), list(cfg.optim.lr_steps), int(cfg.train.epochs),
                             float(cfg.optim.gamma))
    if notice and comm.is_main_process() and not cfg.train.max_iters:
        logger.warning(notice)
    batch_size = int(cfg.train.batch_size)
    logger.info("%d training images, %d classes, %d iterations per epoch, total batch %d, lr %.4g",
                len(data.train_set), data.num_classes, iters_per_epoch, batch_size * comm.get_world_size(), lr)
    if len(data.train_set) < batch_size * comm.get_world_size() and comm.is_main_process():
        logger.warning("the training split has %d images, fewer than a step's total batch of %d (train.batch_size=%d "
                       "x %d ranks): every step repeats images", len(data.train_set),
                       batch_size * comm.get_world_size(), batch_size, comm.get_world_size())
    scale_notice = scale_range_notice(cfg)
    if scale_notice and comm.is_main_process():
        logger.warning(scale_notice)
    trainer = Trainer(net, optimizer, data.loader, info, max_epochs=int(cfg.train.epochs),
                      iters_per_epoch=iters_per_epoch, max_iters=cfg.train.max_iters,
                      scaler=make_grad_scaler(info, bool(cfg.amp.enabled), cfg.amp.loss_scale, str(cfg.amp.dtype)),
                      amp=bool(cfg.amp.enabled), amp_dtype=str(cfg.amp.dtype), grad_clip=cfg.optim.grad_clip,
                      max_nonfinite=int(cfg.train.max_nonfinite), batch_size=batch_size,
                      poison_iters=list(cfg.debug.nonfinite_iters))
    return trainer, schedule


def _build_hooks(cfg: DictConfig, run_dir: Path, info: DeviceInfo, trainer: Trainer, schedule: WarmupStepSchedule,
                 data: TrainData, progress_bar: bool) -> list[HookBase]:
    """LR, evaluation, counts, checkpoints (after the hooks whose state they save), writers (rank 0), throughput."""
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    # Checkpoints carry the classes of their labels, in label order (the training split's, as the file spells
    # them), so evaluation, fine-tuning and deployment can find them in their dataset by name.
    config_dict["data"]["class_names"] = list(data.train_set.class_names)
    config_dict["data"]["num_classes"] = data.num_classes
    amp, amp_dtype = bool(cfg.amp.enabled), str(cfg.amp.dtype)
    net = trainer.model
    hooks: list[HookBase] = [
        LRHook(schedule),
        EvalHook(lambda: evaluate(net, data.val_loader, data.evaluator, info, amp, amp_dtype),
                 int(cfg.train.eval_interval), bool(cfg.train.eval_at_end)),
        CountsHook({"train": data.train_set, "val": data.val_set}),
        CheckpointHook(run_dir / "checkpoints", lambda: training_state(trainer, schedule, config_dict),
                       comm.is_main_process(), int(cfg.train.checkpoint_interval),
                       int(cfg.train.checkpoint_interval_iters)),
    ]
    if comm.get_rank() == 0:
        hooks.append(LoggingHook(default_writers(run_dir, progress_bar), int(cfg.train.log_interval)))
    hooks.append(ThroughputHook())
    return hooks


class RunEnd(HookBase):
    """Registered first: when training has ended, before the final evaluation and the other hooks' ``after_train``,
    SIGINT is held for the rest of the run (:class:`~solo_npu.engine.interrupts.FinalPhase`: a first Ctrl-C waits
    for the run's end, Ctrl-C again stops at once) and rank 0 writes ``summary.json`` with the training's results
    (:meth:`summary`), so that a run stopped during its final evaluation (Ctrl-C twice, a kill) keeps one that
    says so. The run's end writes it again."""

    def __init__(self, run_dir: Path, t0: float, batch_size: int, info: DeviceInfo, eval_at_end: bool) -> None:
        self.run_dir, self.t0, self.batch_size, self.info = Path(run_dir), t0, int(batch_size), info
        self.eval_at_end = bool(eval_at_end)
        self.final = FinalPhase()
        self.reached = False  # training ended: the run is in its final phase

    def after_train(self) -> None:
        self.reached = True
        self.final.install(announce=comm.is_main_process())
        write_summary(self.run_dir, self.summary("ok", ended=False))

    def summary(self, status: str, ended: bool = True) -> dict[str, Any]:
        """:func:`train_summary` now. ``ended``: the run got to its end; if not, after training, and the final
        evaluation (``train.eval_at_end``) has no results at the last iteration, with ``final_evaluation:
        "interrupted"`` and no AP (the latest one would be an earlier evaluation's)."""
        trainer = self.trainer
        summary = train_summary(trainer, status, time.time() - self.t0, self.batch_size, self.info)
        evaluated = evaluated_at(trainer, trainer.iter)
        if not ended and self.reached and self.eval_at_end and not evaluated:
            summary.update(segm_ap=None, bbox_ap=None, final_evaluation="interrupted")
        return summary


def scale_range_notice(cfg: DictConfig) -> str | None:
    """A WARNING when the training scale holds instances larger than the head's last ``scale_ranges`` bound: SOLO
    and mmdet assign an instance to the FPN levels whose range holds the square root of its box area, so a larger
    one is on no level and trains as background. The light models' ranges end at 896 px for their 768x448 scale;
    a light model yaml alone trains at the data config's (1333x800 for coco: instances up to 1033 px)."""
    ranges = OmegaConf.select(cfg, "model.head.scale_ranges")
    scale = OmegaConf.select(cfg, "data.img_scale")
    if not ranges or not scale:
        return None
    top = max(float(r[1]) for r in ranges)
    shorts = list(OmegaConf.select(cfg, "data.multiscale_short") or []) or [min(scale)]
    long_side, short_side = max(scale), max(min(int(s), max(scale)) for s in shorts)
    largest = (long_side * short_side) ** 0.5
    if largest <= top:
        return None
    return (f"model.head.scale_ranges ends at {top:g} px (square root of a box's area) but images train at up to "
            f"{long_side}x{short_side}: an instance larger than {top:g} px (up to {largest:.0f} here) is assigned to "
            "no FPN level and trains as background; the light models' recipes train at 768x448 "
            "(+experiment=solov2_light_r18_3x and the others), or widen the last range")


def _run(trainer: Trainer, model: nn.Module, run_dir: Path, run_end: RunEnd) -> dict[str, Any]:
    """Train; write ``summary.json`` whether training ends, stops on non-finite losses or fails. Stopped after
    training (Ctrl-C twice during the final evaluation), the run's status stays ``ok``."""
    status, ended, stopping = "failed", False, False
    try:
        trainer.train()
        status, ended = "ok", True
    except NonFiniteLossError as exc:
        status, stopping = "nonfinite", True
        logger.error("%s", exc)
        raise
    except KeyboardInterrupt as exc:  # SIGINT / SIGTERM (solo_npu.engine.interrupts): saved, or not mid-step
        status = "ok" if run_end.reached else "interrupted" if isinstance(exc, InterruptedMidStep) else "stopped"
        stopping = interrupts.stops_every_rank(exc)
        raise
    except BaseException as exc:  # a save that failed during such a stop is still every rank's stop
        stopping = interrupts.stops_every_rank(exc.__context__)
        raise
    finally:
        summary = run_end.summary(status, ended)
        if ended:
            summary["ranks_in_sync"] = comm.params_in_sync(model)
            if not summary["ranks_in_sync"]:
                logger.error("the ranks ended with different weights")
        with stop_written("summary.json is written", stopping):  # the other ranks leave after it
            write_summary(run_dir, summary)
    return summary


def train_summary(trainer: Trainer, status: str, duration: float, batch_size: int, info: DeviceInfo) -> dict[str, Any]:
    """``summary.json`` of a training run, from the trainer's loop state and its storage."""
    storage = trainer.storage
    return {
        "mode": "train", "status": status, "fps": storage.latest_value("fps"),
        "final_loss": storage.latest_value("train/loss", storage.latest_value("loss")),
        "segm_ap": storage.latest_value("val/segm_AP"), "bbox_ap": storage.latest_value("val/bbox_AP"),
        "best_segm_ap": storage.latest_value("best_metric"), "duration_sec": duration, "iterations": trainer.iter,
        "epochs": trainer.epoch, "nonfinite_total": trainer.nonfinite_total, "world_size": comm.get_world_size(),
        "batch_size": batch_size, "device": info.type, **count_summary(storage),
    }
