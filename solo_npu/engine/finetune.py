"""Starting weights for evaluation and fine-tuning: load any checkpoint, adapt the classifier."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def set_num_classes(model_cfg: MutableMapping[str, Any], num_classes: int) -> int:
    """Set every ``num_classes`` key in the model config tree; returns how many were set."""
    count = 0
    for key in list(model_cfg.keys()):
        value = model_cfg[key]
        if key == "num_classes":
            model_cfg[key] = int(num_classes)
            count += 1
        elif isinstance(value, MutableMapping):
            count += set_num_classes(value, num_classes)
    return count


def load_weights(model: nn.Module, path: str, source: str = "auto", trust_pickle: bool = False,
                 allow_classifier_change: bool = False, class_names: Sequence[str] | None = None,
                 normalize: Mapping[str, Any] | None = None, loaded: Any = None) -> dict[str, Any]:
    """Load model weights from a checkpoint of this project or any layout the converters read.

    With ``allow_classifier_change`` a classifier trained on another number of classes is left at a
    fresh initialisation (fine-tuning); otherwise that, or any other missing / unexpected entry, is an
    error. A torchvision checkpoint only initialises the backbone.

    ``class_names`` (the dataset's, label order) are compared with the names the checkpoint carries (mmdet
    3.x ``meta.dataset_meta.classes``, mmdet 1.x / 2.x and SOLO ``meta.CLASSES``, this project's
    ``config.data.class_names`` or a converted file's ``meta.dataset_meta.classes``): the same names in
    another order reorder the classifier by name, other names are a WARNING
    (:func:`solo_npu.checkpoints.convert.load_model_weights`). ``normalize`` (the data config's) is compared
    with the pixel normalisation the file's weights were trained on, where the model knows it (AdelaiDet's).
    ``loaded``: the file's contents when the caller has read them already.

    Returns:
        ``{"source", "missing", "unexpected", "reinitialised", "reordered"}`` from the converter.
    """
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.checkpoints.convert import load_model_weights, require_whole_model

    report = load_model_weights(model, path, source=source, trust_pickle=trust_pickle, strict=False,
                                reinit_classifier=allow_classifier_change, class_names=class_names,
                                normalize=normalize, loaded=loaded)
    if report["reinitialised"] and not allow_classifier_change:
        raise CheckpointError(f"checkpoint {path} was trained on another number of classes "
                              f"({', '.join(report['reinitialised'])}); use +experiment=finetune to adapt it")
    require_whole_model(report, path)
    return report


def checkpoint_position(ckpt: Any) -> dict[str, Any]:
    """Where in training the weights of a checkpoint's contents ``ckpt`` were saved, as far as the file says.

    Returns ``{"epoch", "iteration", "experiment", "finetuned_from"}``, each ``None`` when the file does not
    record it. This project's training checkpoints hold ``epoch_number`` (the 1-based epoch of the last step:
    :attr:`~solo_npu.engine.trainer.Trainer.epoch_number`; files written before it was recorded: ``epoch``, the
    0-based epoch the run was in) and ``iteration`` at the top level
    (:func:`solo_npu.engine.checkpointer.training_state`) and the run's config (``experiment_name``, and
    ``checkpoint`` for a fine-tuning); mmcv's runners save ``meta=dict(epoch=self.epoch + 1, iter=self.iter)``
    (open-mmlab/mmcv, mmcv/runner/epoch_based_runner.py, EpochBasedRunner.save_checkpoint), which mmdet and the
    original SOLO checkpoints carry.
    """
    position: dict[str, Any] = {"epoch": None, "iteration": None, "experiment": None, "finetuned_from": None}
    if not isinstance(ckpt, Mapping):
        return position
    if isinstance(ckpt.get("iteration"), int) and isinstance(ckpt.get("epoch"), int):
        number = ckpt.get("epoch_number")
        position.update(epoch=number if isinstance(number, int) else ckpt["epoch"], iteration=ckpt["iteration"])
        config = ckpt.get("config")
        if isinstance(config, Mapping):
            position["experiment"] = config.get("experiment_name")
            finetune = config.get("finetune")
            if isinstance(finetune, Mapping) and finetune.get("enabled") and config.get("checkpoint"):
                position["finetuned_from"] = str(config["checkpoint"])
        return position
    meta = ckpt.get("meta")
    if isinstance(meta, Mapping):
        for key, name in (("epoch", "epoch"), ("iter", "iteration")):
            if isinstance(meta.get(key), int):
                position[name] = meta[key]
    return position


def describe_checkpoint(path: str, position: Mapping[str, Any]) -> str:
    """One line naming the checkpoint file evaluated and the epoch and iteration it was saved at
    (:func:`checkpoint_position`), as the training log's ``saved checkpoint PATH (epoch E, iteration I)`` says."""
    if position["epoch"] is None and position["iteration"] is None:
        return f"evaluating checkpoint {path} (the file records no training epoch or iteration)"
    step = ", ".join(f"{name} {position[name]}" for name in ("epoch", "iteration") if position[name] is not None)
    line = f"evaluating checkpoint {path} ({step}"
    if position["experiment"]:
        line += f", experiment {position['experiment']}"
    if position["finetuned_from"]:
        line += f", fine-tuned from {position['finetuned_from']}"
    return line + ")"


def _freeze_batchnorm(module: nn.Module) -> None:
    from solo_npu.models import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            _freeze_batchnorm(child)


def freeze_backbone(model: nn.Module) -> int:
    """Freeze ``model.backbone``: no gradients, and BatchNorm statistics fixed (FrozenBatchNorm2d).

    Returns the number of parameters frozen.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise AttributeError("train.freeze_backbone=true but the model has no `backbone` attribute")
    count = 0
    for p in backbone.parameters():
        if p.requires_grad:
            p.requires_grad_(False)
            count += 1
    _freeze_batchnorm(backbone)
    return count
