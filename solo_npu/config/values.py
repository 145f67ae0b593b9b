"""Ranges of the numeric training settings, checked before any worker starts.

The schema (``schema.py``) fixes each key's type; this module fixes the values that make sense, so that
``train.batch_size=0`` or ``launcher.node_rank=5`` with two nodes is one line naming the key, not a traceback
from the data loader, the optimiser or the launcher, and ``train.epochs=0`` does not end a run that trained
nothing as if it had succeeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MODEL_CHOICES", "MODES", "ConfigValueError", "check_eval_preprocessing", "check_model_choices",
           "check_trainable", "check_values"]


class ConfigValueError(ValueError):
    """A setting outside its range: one line naming the key, its value and the range."""


# key -> (lowest, highest, lowest included, null allowed); None: no bound
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "train.epochs": (1, None, True, False),
    "train.batch_size": (1, None, True, False),
    "train.eval_batch_size": (1, None, True, False),
    "train.max_iters": (1, None, True, True),
    "train.workers": (0, None, True, True),
    "train.log_interval": (1, None, True, False),
    "train.eval_interval": (0, None, True, False),
    "train.checkpoint_interval": (0, None, True, False),
    "train.checkpoint_interval_iters": (0, None, True, False),
    "train.max_nonfinite": (0, None, True, False),
    "train.vis_images": (0, None, True, False),
    "optim.base_lr": (0, None, True, False),  # 0: steps that change nothing (benchmarks, checks)
    "optim.base_batch_size": (1, None, True, False),
    "optim.momentum": (0, None, True, False),
    "optim.weight_decay": (0, None, True, False),
    "optim.grad_clip": (0, None, False, True),
    "optim.warmup_iters": (0, None, True, False),
    "optim.warmup_ratio": (0, 1, False, False),
    "optim.gamma": (0, None, False, False),
    "optim.min_lr_ratio": (0, 1, True, False),
    "launcher.nproc_per_node": (1, None, True, False),
    "launcher.nnodes": (1, None, True, False),
    "launcher.node_rank": (0, None, True, False),
    "launcher.master_port": (0, 65535, True, False),
    "launcher.timeout_min": (1, None, True, False),
    "data.num_workers": (0, None, True, False),
    "data.max_instances": (1, None, True, False),
    "data.min_size": (0, None, True, False),
    "data.flip_prob": (0, 1, True, False),
}

MODES = ("train", "eval")  # mode: solo_npu.engine.job.run_job
_ANY_CASE_KEYS = {"optim.name"}  # build_optimizer lowers it


def choices() -> dict[str, tuple[str, ...]]:
    """Setting -> the values the code that reads it takes, from that code's own constants. Each reader refuses
    another value too, but only once the run has started, as a traceback."""
    from solo_npu.data.transforms import PAD_MODES, PAD_POSITIONS
    from solo_npu.engine.optim import LR_POLICIES, OPTIMIZERS
    from solo_npu.engine.writers import PROGRESS_MODES
    from solo_npu.runtime.device import AMP_DTYPES

    return {"mode": MODES, "optim.name": OPTIMIZERS, "optim.policy": LR_POLICIES, "amp.dtype": AMP_DTYPES,
            "train.progress": PROGRESS_MODES, "data.pad.mode": PAD_MODES, "data.pad.position": PAD_POSITIONS}

_NORMS = ("bn", "frozen_bn", "gn")  # solo_npu.models.backbones.resnet.build_norm
_STYLES = ("pytorch", "caffe")  # ResNet Bottleneck: stride on the 3x3 (pytorch) or the first 1x1 (caffe) conv
# builder (the model's ``_target_``) -> key under ``model`` -> the values its builder takes (None: null). The builders
# refuse other values too, but only once the run has started, through Hydra's report ("Error in call to target"),
# and some not at all (a ResNet-18's ``style``, read only by the Bottleneck blocks of ResNet-50 and deeper).
MODEL_CHOICES: dict[str, dict[str, tuple[str | None, ...]]] = {
    "solo_npu.models.solov2.build_solov2": {
        "backbone.norm": _NORMS,
        "backbone.style": _STYLES,
        "neck.norm": (None, "gn", "bn"),  # solo_npu.models.necks.fpn.FPN
        "test.kernel": ("gaussian", "linear"),  # matrix NMS decay (solo_npu.models.solov2.matrix_nms)
        "head.loss_mask_norm": ("cells", "pairs"),  # solo_npu.models.solov2.losses.solov2_loss mask_norm
    },
    "solo_npu.models.fcos.build_fcos": {
        "norm": _NORMS,
        "style": _STYLES,
        "head.norm": ("none", None, "gn"),  # solo_npu.models.fcos.HEAD_NORMS (any case), or null
    },
    "solo_npu.models.yolact_edge.build_yolact_edge": {
        "export_mode": ("detections", "heads", "features"),  # solo_npu.models.yolact_edge.EXPORT_OUTPUT_NAMES
    },
}
_ANY_CASE = {("solo_npu.models.fcos.build_fcos", "head.norm")}  # fcos.head_norm lowers and strips the value
def _get(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _range_text(low: float | None, high: float | None, low_included: bool) -> str:
    if high is None:
        return f"{'>=' if low_included else '>'} {low:g}"
    return f"in {'[' if low_included else '('}{low:g}, {high:g}]"


def check_values(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigValueError` for the first setting of :data:`RANGES` outside its range, and for a
    ``launcher.node_rank`` not below ``launcher.nnodes``. Keys the config does not have are not checked."""
    for key, (low, high, low_included, nullable) in RANGES.items():
        present, value = _get(cfg, key)
        if not present or (value is None and nullable):
            continue
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        ok = number is not None and math.isfinite(number)
        if ok and low is not None:
            ok = number >= low if low_included else number > low
        if ok and high is not None:
            ok = number <= high
        if not ok:
            allowed = _range_text(low, high, low_included) + (" or null" if nullable else "")
            raise ConfigValueError(f"{key}={value}: must be {allowed}")
    for key, allowed in choices().items():
        present, value = _get(cfg, key)
        seen = value.lower() if isinstance(value, str) and key in _ANY_CASE_KEYS else value
        if present and seen not in allowed:
            raise ConfigValueError(f"{key}={_choice_text(value)}: must be one of {', '.join(allowed)}")
    present, scale = _get(cfg, "amp.loss_scale")
    if present:
        from solo_npu.runtime.device import static_loss_scale

        try:
            static_loss_scale(scale)
        except ValueError:
            raise ConfigValueError(f"amp.loss_scale={scale}: must be dynamic or a number > 0 (128: apex O1's)"
                                   ) from None
    _check_normalize(cfg)
    check_model_choices(cfg)
    present, nnodes = _get(cfg, "launcher.nnodes")
    _, node_rank = _get(cfg, "launcher.node_rank")
    if present and isinstance(node_rank, int) and node_rank >= nnodes:
        raise ConfigValueError(f"launcher.node_rank={node_rank}: must be below launcher.nnodes={nnodes} "
                               f"(0..{nnodes - 1})")



def _check_normalize(cfg: Mapping[str, Any]) -> None:
    """A ``data.normalize.mean`` that is the other style's mean, in the other channel order (a caffe style left
    with the RGB ImageNet mean after ``data.normalize.style=caffe``): the red and blue means swapped."""
    from solo_npu.data.transforms import pixel_normalization

    _, style = _get(cfg, "data.normalize.style")
    _, mean = _get(cfg, "data.normalize.mean")
    if style not in ("pytorch", "caffe") or not isinstance(mean, (list, tuple)) or len(mean) != 3:
        return
    other = "caffe" if style == "pytorch" else "pytorch"
    if [round(float(v), 3) for v in mean] == [round(v, 3) for v in pixel_normalization(other)[1]]:
        order = "BGR" if style == "caffe" else "RGB"
        raise ConfigValueError(
            f"data.normalize.mean={list(mean)} is the {other} style's mean, but data.normalize.style={style} feeds "
            f"{order} pixels: set data.normalize.mean=null data.normalize.std=null (the {style} style's own)")


def _choice_text(value: Any) -> str:
    return "null" if value is None else str(value)


def check_model_choices(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigValueError` for a model setting of :data:`MODEL_CHOICES` outside the values its builder
    takes, in one line naming the key, the value and those values (``model.backbone.norm=bnx: must be one of bn,
    frozen_bn, gn``). Keys the model does not have, and builders the table does not name, are not checked."""
    present, model = _get(cfg, "model")
    if not present or not isinstance(model, Mapping):
        return
    target = str(model.get("_target_", ""))
    for key, allowed in MODEL_CHOICES.get(target, {}).items():
        found, value = _get(model, key)
        if not found:
            continue
        seen = value.strip().lower() if isinstance(value, str) and (target, key) in _ANY_CASE else value
        if isinstance(seen, bool) or seen not in allowed:  # a yaml ``off`` / ``no`` reads as False
            raise ConfigValueError(f"model.{key}={_choice_text(value)}: must be one of "
                                   f"{', '.join(_choice_text(v) for v in allowed)}")


def check_trainable(cfg: Mapping[str, Any], model_choice: str | None = None) -> None:
    """Raise :class:`ConfigValueError` when a training run (``mode=train``, fine-tuning included) is asked of a
    model whose ``trainable`` is False (:mod:`solo_npu.models.contract`: FCOS, YolactEdge, SSD-ResNet34 have no
    training losses), in one line naming the model and what it can do instead; the run would otherwise generate
    its data and start its workers before the model's NotImplementedError.

    Args:
        model_choice: the ``model=`` choice that composed ``cfg`` (``fcos``), named in the line; ``None``: the
            model's ``name``.
    """
    present, model = _get(cfg, "model")
    if not present or not isinstance(model, Mapping) or cfg.get("mode", "train") != "train":
        return
    built = _built_on_meta(model)
    if built is None or getattr(built, "trainable", True):
        return
    label = _display_name(built)
    what = "fine-tuned" if (cfg.get("finetune") or {}).get("enabled") else "trained"
    who = f"model={model_choice}" if model_choice else f"model {model.get('name') or label}"
    raise ConfigValueError(
        f"{who}: {label} is inference-only in this project (no training losses) and cannot be {what}; "
        f"python deploy.py model={model_choice or 'MODEL'} checkpoint=PATH exports, verifies, evaluates and "
        "benchmarks it, task=predict input=IMG_OR_DIR predicts with it")


def _built_on_meta(model: Mapping[str, Any]) -> Any:
    """The model built on the meta device (no weights, no file read: ``pretrained`` is set to null), for the facts
    it states about itself (:mod:`solo_npu.models.contract`); ``None`` when it cannot be built here (the run's own
    build reports why). A setting the builder refuses (:class:`ConfigValueError`) is raised."""
    from solo_npu.models import build_model

    spec = {key: value for key, value in model.items() if key != "deploy"}
    if "pretrained" in spec:
        spec["pretrained"] = None
    try:
        return build_model(spec, device="meta")
    except ConfigValueError:  # a setting the builder refuses: one line before any data or worker
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built is reported by the run's own build
        return None


def _display_name(built: Any) -> str:
    return str(getattr(built, "display_name", type(built).__name__))


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _list_text(values: Any) -> str:
    return "[" + ",".join(_number_text(v) for v in values) + "]"


def check_eval_preprocessing(cfg: Mapping[str, Any], model_choice: str | None = None) -> None:
    """Raise :class:`ConfigValueError` when ``mode=eval`` is asked of a model with pre-processing of its own (its
    ``preprocessing`` has a ``style``: FCOS, YolactEdge, SSD-ResNet34) and the data config feeds it other
    pixels: another channel order, mean or std (``data.normalize``), resize mode, scale (``data.img_scale``
    against the model's ``deploy.input_shape``, the input its pre-processing fits every image to) or padding
    position (``data.pad.position``). train.py's evaluation resizes and normalises every image as the data config
    says, so the model would be scored on pixels it was not trained on, with a wrong AP and no error.

    The line names each difference and the overrides that make the data config match (``data.normalize.style=caffe
    data.normalize.mean=[102.9801,115.9465,122.7717] data.normalize.std=[1,1,1]``); for a model that stretches
    every image to its input (a resize train.py does not do) it names deploy.py, which evaluates it on that input.
    ``model_choice``: as in :func:`check_trainable`.
    """
    from solo_npu.data.transforms import pixel_normalization

    present, model = _get(cfg, "model")
    if not present or not isinstance(model, Mapping) or cfg.get("mode", "train") != "eval":
        return
    built = _built_on_meta(model)
    pre = getattr(built, "preprocessing", None)
    if pre is None or pre.style is None:  # SOLOv2: the data config's pre-processing
        return
    label = _display_name(built)
    who = f"model={model_choice}" if model_choice else f"model {model.get('name') or label}"
    shape = (model.get("deploy") or {}).get("input_shape")
    size = tuple(int(v) for v in shape[-2:]) if isinstance(shape, (list, tuple)) and len(shape) >= 2 else None
    if pre.resize == "stretch":
        into = f" to its {size[0]}x{size[1]} input" if size else " to its input"
        raise ConfigValueError(
            f"{who}: {label}'s own pre-processing stretches every image{into} (resize stretch), which train.py's "
            "evaluation (keep-ratio resize to data.img_scale) cannot do; python deploy.py "
            f"model={model_choice or 'MODEL'} checkpoint=PATH evaluates it on that input")
    _, data_norm = _get(cfg, "data.normalize")
    data_norm = data_norm if isinstance(data_norm, Mapping) else {}
    style, mean, std = pixel_normalization(str(data_norm.get("style", "pytorch")), data_norm.get("mean"),
                                           data_norm.get("std"))
    own_style, own_mean, own_std = pixel_normalization(pre.style, pre.mean, pre.std)
    order = {"pytorch": "RGB", "caffe": "BGR"}
    differences: list[str] = []
    overrides: list[str] = []

    def differs(a: Any, b: Any) -> bool:
        return [round(float(v), 4) for v in a] != [round(float(v), 4) for v in b]

    if style != own_style or differs(mean, own_mean) or differs(std, own_std):
        if style != own_style:
            differences.append(f"data.normalize.style={style} ({order[style]}) against the model's {own_style} "
                               f"({order[own_style]})")
        if differs(mean, own_mean):
            differences.append(f"mean {_list_text(mean)} against {_list_text(own_mean)}")
        if differs(std, own_std):
            differences.append(f"std {_list_text(std)} against {_list_text(own_std)}")
        overrides += [f"data.normalize.style={own_style}", f"data.normalize.mean={_list_text(own_mean)}",
                      f"data.normalize.std={_list_text(own_std)}"]
    _, img_scale = _get(cfg, "data.img_scale")
    if size is not None and isinstance(img_scale, (list, tuple)) and len(img_scale) == 2:
        own_scale = [max(size), min(size)]  # (long, short), as data.img_scale
        if sorted(int(v) for v in img_scale) != sorted(own_scale):
            differences.append(f"data.img_scale={_list_text(img_scale)} against the model's {_list_text(own_scale)} "
                               f"(its {size[0]}x{size[1]} input)")
            overrides.append(f"data.img_scale={_list_text(own_scale)}")
    found, position = _get(cfg, "data.pad.position")
    if found and position != pre.pad_position:
        differences.append(f"data.pad.position={position} against the model's {pre.pad_position}")
        overrides.append(f"data.pad.position={pre.pad_position}")
    if differences:
        raise ConfigValueError(
            f"{who}: the data config's pre-processing differs from {label}'s own ({'; '.join(differences)}), "
            f"which would give a wrong AP; add {' '.join(overrides)}")
