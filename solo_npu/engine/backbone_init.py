"""ImageNet initialisation of the backbone for a training run: which file ``model.pretrained`` means,
and when starting without one is refused.

``model.pretrained`` is ``auto`` (the torchvision file for the backbone depth under ``data/pretrained/``
or beside ``data.root``), a path, or ``none`` (random init on purpose). A run that starts from a
checkpoint (``resume``, ``checkpoint=``) reads no ImageNet file: its weights come from the checkpoint.
A frozen-BatchNorm backbone (``frozen_stages >= 0``, ``norm_eval``, ``frozen_bn`` or
``train.freeze_backbone``) started from random weights keeps identity statistics for the whole run and
cannot reach the reference AP, so that start is an error; from-scratch training (``none`` with
trainable norms, as the demo does) stays possible.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CAFFE_RESNET_FILES", "PRETRAINED_DIR", "TORCHVISION_RESNET_FILES", "BackboneInitError",
           "backbone_init_file", "candidate_files", "is_frozen_bn"]

PRETRAINED_DIR = Path("data") / "pretrained"
# torchvision's ImageNet ResNet weights (IMAGENET1K_V1) under their download names: the model_urls of
# torchvision < 0.13 (the files mmdet's and SOLO's ``torchvision://resnetN`` fetch), then the same
# weights re-saved for torchvision >= 0.13. The Ascend ModelZoo SOLOV2 for PyTorch training guide renames
# resnet50-19c8e357.pth to data/pretrained/resnet50.pth; that name is looked for first.
TORCHVISION_RESNET_FILES = {
    18: ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
    34: ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
    50: ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
    101: ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
    152: ("resnet152-b121ed2d.pth", "resnet152-394f9c45.pth"),
}
# MSRA's caffe-style ImageNet ResNets (stride on the first 1x1 conv, BGR input minus the mean, std 1, BatchNorm
# folded to a fixed affine) as mmdet reads them: open-mmlab://detectron2/resnet50_caffe and
# open-mmlab://resnet50_caffe in mmcv's model_zoo/open_mmlab.json, converted to torchvision's names. A caffe-style
# run (model.backbone.style=caffe) looks for these instead of torchvision's.
CAFFE_RESNET_FILES = {
    50: ("resnet50_msra-5891d200.pth", "resnet50_caffe-788b5fa3.pth"),
    101: ("resnet101_msra-6cc46731.pth", "resnet101_caffe-3ad79236.pth"),
}
_NONE = ("none", "null", "")


class BackboneInitError(ValueError):
    """The run would start without the backbone weights it needs; the message is one line."""


def _dirs(data_root: str | None) -> list[Path]:
    dirs = [PRETRAINED_DIR]
    if data_root:
        beside = Path(str(data_root)).parent / "pretrained"
        if beside.resolve() != PRETRAINED_DIR.resolve():
            dirs.append(beside)
    return dirs


def candidate_files(depth: int, data_root: str | None = None, style: str = "pytorch") -> list[Path]:
    """The files ``model.pretrained=auto`` looks for, in order, in ``data/pretrained/`` (relative to the launch
    directory) and in ``pretrained/`` beside ``data.root`` (the ModelZoo layout ``data/{coco,pretrained}``):
    ``resnet{depth}.pth`` then torchvision's names; for a caffe-style backbone mmdet's names of MSRA's weights
    (:data:`CAFFE_RESNET_FILES`) first (a torchvision file found after them is then refused for what it is)."""
    names = [f"resnet{depth}.pth", *TORCHVISION_RESNET_FILES.get(int(depth), ())]
    if style == "caffe":
        names = [*CAFFE_RESNET_FILES.get(int(depth), ()), *names]
    return [d / n for d in _dirs(data_root) for n in names]


def is_frozen_bn(backbone: Mapping[str, Any], freeze_backbone: bool = False) -> bool:
    """Whether the backbone keeps fixed BatchNorm statistics or frozen stages while training
    (defaults as :class:`~solo_npu.models.backbones.resnet.ResNet`: ``norm_eval`` true, nothing frozen)."""
    norm = str(backbone.get("norm", "bn"))
    if norm == "gn":
        return freeze_backbone or int(backbone.get("frozen_stages", -1)) >= 0
    return (freeze_backbone or norm == "frozen_bn" or int(backbone.get("frozen_stages", -1)) >= 0
            or bool(backbone.get("norm_eval", True)))


def _check_fits(path: str, state: Mapping[str, Any], backbone: Mapping[str, Any]) -> None:
    """One line when the file's tensors are not those of the configured ResNet (another depth or width), checked
    against a weightless ResNet of the config before any worker builds the model."""
    import torch

    from solo_npu.models.backbones.resnet import ResNet

    accepted = inspect.signature(ResNet.__init__).parameters
    with torch.device("meta"):
        own = ResNet(**{k: v for k, v in backbone.items() if k in accepted}).state_dict()
    counters = ("num_batches_tracked",) if str(backbone.get("norm", "bn")) != "gn" else (
        "num_batches_tracked", "running_mean", "running_var")
    missing = [k for k in own if k not in state and not k.endswith(counters)]
    unexpected = [k for k in state if k not in own and not k.startswith("fc.") and not k.endswith(counters)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        depth = backbone.get("depth", 50)
        found = [f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else "",
                 f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
                 f"other shapes {shapes[:2]}{' ...' if len(shapes) > 2 else ''}" if shapes else ""]
        raise BackboneInitError(f"model.pretrained={path} is not ImageNet ResNet-{depth} weights for this backbone: "
                                f"{', '.join(f for f in found if f)}")


def _check_input(path: str, backbone: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """``path`` when the run feeds its ImageNet weights what they were trained on. torchvision's: a pytorch-style
    ResNet (the stride on the 3x3 conv) and RGB pixels normalised by the ImageNet mean and std. MSRA's
    caffe-style weights (BatchNorm folded to a fixed affine, :func:`folded_batchnorm`): a caffe-style ResNet,
    BGR pixels minus the mean with std 1, and BatchNorm that stays fixed."""
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.data.transforms import pixel_normalization
    from solo_npu.models.backbones.resnet import folded_batchnorm, imagenet_state

    try:
        state = imagenet_state(path)
    except CheckpointError as exc:
        raise BackboneInitError(f"model.pretrained={path}: {exc}") from None
    _check_fits(path, state, backbone)
    folded = folded_batchnorm(state)
    style = str(backbone.get("style", "pytorch"))
    normalize = (cfg.get("data") or {}).get("normalize") or {}
    norm = str(normalize.get("style", "pytorch"))
    has = f"this run has model.backbone.style={style} data.normalize.style={norm}"
    if not folded:
        # the style and any explicit mean / std: torchvision's transforms feed RGB minus the ImageNet mean over its std
        found = pixel_normalization(norm, normalize.get("mean"), normalize.get("std"))
        imagenet = pixel_normalization("pytorch")
        detail = "".join(f" data.normalize.{key}={[round(v, 4) for v in value]}"
                         for key, value, want in zip(("mean", "std"), found[1:], imagenet[1:]) if value != want)
        if style != "pytorch" or found != imagenet:
            raise BackboneInitError(
                f"model.pretrained={path} holds torchvision's ImageNet weights, trained pytorch-style on RGB input "
                f"normalised by the ImageNet mean and std, but {has}{detail}: keep both pytorch (and the ImageNet "
                "mean and std) to start from them, or start a caffe-style model from MSRA's "
                "caffe-style ImageNet weights (mmdet's resnet50_msra-5891d200.pth) or from a checkpoint trained "
                "that way (checkpoint=PATH, e.g. AdelaiDet's)")
        return path
    std = pixel_normalization(norm, normalize.get("mean"), normalize.get("std"))[2] if norm == "caffe" else None
    if style != "caffe" or norm != "caffe" or std != (1.0, 1.0, 1.0):
        detail = "" if std is None or std == (1.0, 1.0, 1.0) else f" data.normalize.std={list(std)}"
        raise BackboneInitError(
            f"model.pretrained={path} holds MSRA's caffe-style ImageNet weights (BatchNorm as a fixed affine, as "
            "in mmdet's resnet50_msra-5891d200.pth), trained with the stride on the first 1x1 conv on BGR pixels "
            f"minus the mean with std 1, but {has}{detail}: add model.backbone.style=caffe "
            "data.normalize.style=caffe (std 1), or start from torchvision's weights (resnet50-19c8e357.pth)")
    if str(backbone.get("norm", "bn")) == "gn" or (str(backbone.get("norm", "bn")) == "bn"
                                                     and not bool(backbone.get("norm_eval", True))):
        raise BackboneInitError(
            f"model.pretrained={path} holds MSRA's caffe-style ImageNet weights, whose BatchNorm is a fixed affine "
            f"(running mean 0, variance 1), but this run normalises with model.backbone.norm="
            f"{backbone.get('norm', 'bn')} model.backbone.norm_eval={backbone.get('norm_eval', True)}, which "
            "replaces that affine by batch statistics: keep model.backbone.norm=bn model.backbone.norm_eval=true")
    return path


def backbone_init_file(cfg: Mapping[str, Any], starts_from: str | None = None, read: bool = True) -> str | None:
    """The ImageNet file to load into the backbone of a training run, or ``None``.

    Args:
        cfg: the resolved training config (``model``, ``data``, ``train`` sections).
        starts_from: the checkpoint the run starts from (resume or ``checkpoint=``), if any: then
            nothing is loaded and nothing is required.
        read: read the file and check that it fits the backbone and the run's input (train.py does this once,
            before any worker starts; the workers then only resolve the name and let the model load it).

    Raises:
        BackboneInitError: an explicit ``model.pretrained`` file is missing, or a frozen-BN backbone
            would start from random weights.
    """
    model = cfg.get("model") or {}
    if "pretrained" not in model or starts_from:
        return None
    value = model.get("pretrained")
    text = "none" if value is None else str(value).strip()
    backbone = model.get("backbone") or {}
    depth = int(backbone.get("depth", 50))
    train = cfg.get("train") or {}
    frozen = is_frozen_bn(backbone, bool(train.get("freeze_backbone", False)))
    if text.lower() not in ("auto", *_NONE):
        if not Path(text).is_file():
            raise BackboneInitError(f"model.pretrained={text}: no such file (cwd {Path.cwd()})")
        return _check_input(text, backbone, cfg) if read else text
    if text.lower() == "auto":
        data_root = (cfg.get("data") or {}).get("root")
        style = str(backbone.get("style", "pytorch"))
        candidates = candidate_files(depth, data_root, style)
        for path in candidates:
            if path.is_file():
                return _check_input(str(path), backbone, cfg) if read else str(path)
        if not frozen:
            return None
        where = "; ".join(f"{d.resolve()}/{{{','.join(p.name for p in candidates if p.parent == d)}}}"
                          for d in _dirs(data_root))
        raise BackboneInitError(
            f"model.pretrained=auto found no ImageNet ResNet-{depth} weights (looked for {where}) and this "
            "backbone keeps frozen BatchNorm / stages, which cannot train from random weights: put "
            f"{'MSRA' if style == 'caffe' else 'torchvision'}'s file there, pass model.pretrained=PATH, or train "
            "from scratch on purpose with model.pretrained=none "
            "model.backbone.frozen_stages=-1 model.backbone.norm_eval=false")
    if frozen:
        raise BackboneInitError(
            f"model.pretrained=none starts a frozen-BatchNorm ResNet-{depth} backbone from random weights: pass "
            "model.pretrained=PATH (torchvision ImageNet weights), or for from-scratch training also set "
            "model.backbone.frozen_stages=-1 model.backbone.norm_eval=false")
    return None
