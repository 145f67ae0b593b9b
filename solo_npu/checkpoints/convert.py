"""Checkpoint converters: this project's, mmdet 3.x SOLOv2, original WXinlong/SOLO and torchvision ResNet.

mmdet 3.x names are this project's names. Original SOLO checkpoints rename the head (``bbox_head.`` ->
``mask_head.``, ``mask_feat_head.`` -> ``mask_head.mask_feature_head.``); their classifier has
``num_classes - 1`` outputs for ``num_classes=81`` (channel c-1 is class c), which is our contiguous
layout, and a classifier with one extra output has its background channel 0 dropped. torchvision
ResNet weights initialise ``backbone.*``.

A checkpoint decides its classes: :func:`checkpoint_classes` reads the count from the classifier and
the names from the file's metadata (mmdet 3.x ``meta.dataset_meta.classes``, mmdet 1.x/2.x
``meta.CLASSES``, this project's ``config.data.class_names``). Loading into a model with another
number of classes is an error unless the caller fine-tunes (``reinit_classifier=True``).

CLI::

    python -m solo_npu.checkpoints.convert SRC DST --from solo|mmdet|torchvision|ours|auto \
        [--trust-pickle] [--model-config conf/model/solov2_r50.yaml --num-classes 80]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from solo_npu.checkpoints.io import CheckpointError, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["SOURCES", "CheckpointClasses", "checkpoint_class_names", "checkpoint_classes", "convert_state_dict",
           "detect_source", "extract_state_dict", "load_model_weights", "main"]

SOURCES = ("ours", "mmdet", "solo", "torchvision", "fcos", "yolact_edge", "ssd_resnet34")
# Detector classes whose reference checkpoints have converters of their own (convert_detectors.py).
DETECTOR_KINDS = {"FCOS": "fcos", "YolactEdge": "yolact_edge", "SSDResNet34": "ssd_resnet34"}
SOLO_RENAMES = (
    ("bbox_head.cate_convs.", "mask_head.cls_convs."),
    ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
    ("bbox_head.solo_cate.", "mask_head.conv_cls."),
    ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
    ("mask_feat_head.convs_all_levels.", "mask_head.mask_feature_head.convs_all_levels."),
    ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
)
# Layers with one output channel per class (a model may name its own in ``classifier_prefixes``).
CLASSIFIER_PREFIXES = ("mask_head.conv_cls.",)
CLASSIFIER_WEIGHT = "mask_head.conv_cls.weight"


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def extract_state_dict(ckpt: Any) -> tuple[dict[str, Tensor], str | None]:
    """The tensor dict inside a loaded checkpoint and the container key it came from (``model``,
    ``state_dict`` or ``None`` for a bare state dict)."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(ckpt).__name__}, expected a dict")
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            state = {k: v for k, v in ckpt[key].items() if isinstance(v, Tensor)}
            return _strip_prefix(state, "module."), key
    state = {k: v for k, v in ckpt.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(ckpt)[:10]})")
    return _strip_prefix(state, "module."), None


def detect_source(state: Mapping[str, Tensor], container: str | None = None) -> str:
    """Guess the layout of a state dict: ``ours``, ``mmdet``, ``solo`` or ``torchvision``."""
    keys = list(state)
    if any(k.startswith(("bbox_head.", "mask_feat_head.")) for k in keys):
        return "solo"
    if any(k.startswith(("conv1.", "layer1.")) for k in keys):
        return "torchvision"
    if container == "model":
        return "ours"
    if container == "state_dict":
        return "mmdet"
    if any(k.startswith(("backbone.", "neck.", "mask_head.")) for k in keys):
        return "ours"
    raise CheckpointError(f"cannot tell the checkpoint layout from its keys (first: {keys[:5]}); pass a source")


def convert_state_dict(state: Mapping[str, Tensor], source: str, num_classes: int | None = None) -> dict[str, Tensor]:
    """Rename ``state`` from ``source``'s layout to this project's (mmdet 3.x) names.

    Args:
        num_classes: the target model's classes; a SOLO classifier with ``num_classes + 1`` outputs
            loses its background channel 0.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; expected one of {SOURCES} or 'auto'")
    if source in DETECTOR_KINDS.values():
        raise ValueError(f"{source} checkpoints convert from the whole file: use load_model_weights or the CLI")
    if source in ("ours", "mmdet"):
        return {k: v for k, v in state.items() if not k.startswith("data_preprocessor.")}
    if source == "torchvision":
        return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for old, new in SOLO_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    cls_w = out.get("mask_head.conv_cls.weight")
    if num_classes is not None and cls_w is not None and cls_w.shape[0] == num_classes + 1:
        logger.info("SOLO classifier has %d outputs: dropping background channel 0", cls_w.shape[0])
        for name in ("mask_head.conv_cls.weight", "mask_head.conv_cls.bias"):
            if name in out:
                out[name] = out[name][1:]
    return out


def _model_num_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


@dataclass(frozen=True)
class CheckpointClasses:
    """The classes a checkpoint was trained on.

    Attributes:
        num_classes: foreground classes, or ``None`` when neither the classifier nor the metadata says.
        names: class names from the file's metadata (``None`` when it has none).
        origin: where ``num_classes`` was read (a state-dict key or a metadata path).
    """

    num_classes: int | None
    names: tuple[str, ...] | None
    origin: str


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def checkpoint_class_names(ckpt: Any) -> tuple[tuple[str, ...] | None, str]:
    """Class names stored in a loaded checkpoint and where they were found (``(None, "")`` if nowhere)."""
    if not isinstance(ckpt, Mapping):
        return None, ""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    for where, value in (("meta.dataset_meta.classes", dataset_meta.get("classes")),
                         ("meta.CLASSES", meta.get("CLASSES")), ("config.data.class_names", data.get("class_names"))):
        names = _names(value)
        if names is not None:
            return names, where
    return None, ""


def checkpoint_classes(ckpt: Any, source: str = "auto") -> CheckpointClasses:
    """The class count (and names) of a loaded checkpoint.

    The count is the classifier's output channels (``mask_head.conv_cls``, after renaming to this
    project's names). Names come from the metadata; an original SOLO classifier with one output more
    than the names (a background channel 0) counts the names. Layouts without that classifier
    (FCOS, YolactEdge, SSD) count their names only.

    Raises:
        CheckpointError: the names disagree with the classifier.
    """
    names, names_at = checkpoint_class_names(ckpt)
    weight = None
    if source not in DETECTOR_KINDS.values():
        state, container = extract_state_dict(ckpt)
        try:
            layout = detect_source(state, container) if source == "auto" else source
        except CheckpointError:
            layout = None
        if layout in ("ours", "mmdet", "solo"):
            weight = convert_state_dict(state, layout).get(CLASSIFIER_WEIGHT)
    if weight is None:
        return CheckpointClasses(None if names is None else len(names), names, names_at)
    outputs = int(weight.shape[0])
    if names is None or len(names) == outputs:
        return CheckpointClasses(outputs, names, CLASSIFIER_WEIGHT)
    if len(names) + 1 == outputs:  # background channel 0, dropped on loading
        return CheckpointClasses(len(names), names, CLASSIFIER_WEIGHT)
    raise CheckpointError(f"the checkpoint's classifier ({CLASSIFIER_WEIGHT}) has {outputs} outputs but {names_at} "
                          f"names {len(names)} classes")


def load_model_weights(model: nn.Module, path: str | os.PathLike, source: str = "auto", trust_pickle: bool = False,
                       strict: bool | None = None, reinit_classifier: bool = False,
                       loaded: Any = None) -> dict[str, Any]:
    """Load a checkpoint of any supported layout into ``model``.

    A classifier of another size (``mask_head.conv_cls``, or the model's ``classifier_prefixes``) is
    an error naming both class counts, unless ``reinit_classifier`` (fine-tuning): then it is skipped
    and re-initialised with ``model.reset_classifier()``, with a WARNING. Any other shape mismatch is
    an error naming the key and both shapes.

    Args:
        source: ``auto`` or one of :data:`SOURCES`. For FCOS, YolactEdge and SSD-ResNet34 models,
            ``auto`` reads our own checkpoints as they are and anything else through that model's
            reference-checkpoint converter.
        trust_pickle: allow pickled Python objects in the file (old mmcv checkpoints).
        strict: require every model key (except a re-initialised classifier) and no unexpected keys.
            Default: True, except for ``torchvision`` (backbone only).
        reinit_classifier: allow a classifier trained on another number of classes to be replaced
            by a fresh one (fine-tuning only).
        loaded: the checkpoint already read from ``path`` (read once by callers that inspect it first).

    Returns:
        ``{"source", "missing", "unexpected", "reinitialised"}``.

    Raises:
        CheckpointError: unreadable file, unknown layout, shape or class-count mismatch, or strict key
            mismatch.
    """
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle) if loaded is None else loaded
    state, container = extract_state_dict(ckpt)
    detector_kind = DETECTOR_KINDS.get(type(model).__name__)
    if detector_kind and source == "auto":
        own_keys = model.state_dict()
        source = "ours" if all(k in own_keys for k in state) else detector_kind
    if source in DETECTOR_KINDS.values():
        from solo_npu.checkpoints.convert_detectors import DETECTOR_CONVERTERS

        try:
            result = model.load_state_dict(DETECTOR_CONVERTERS[source](ckpt), strict=True if strict is None else strict)
        except RuntimeError as exc:  # size or key mismatch: torch's message lists every key
            first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
            raise CheckpointError(f"{path} ({source} layout) does not fit the model: {first}") from exc
        logger.info("loaded %s weights from %s", source, path)
        return {"source": source, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
                "reinitialised": []}
    if source == "auto":
        source = detect_source(state, container)
    state = convert_state_dict(state, source, _model_num_classes(model))
    strict = source != "torchvision" if strict is None else strict

    own = model.state_dict()
    cls_prefixes = tuple(getattr(model, "classifier_prefixes", CLASSIFIER_PREFIXES))
    reinitialised, errors, class_counts = [], [], None
    for key, value in list(state.items()):
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            if key.startswith(cls_prefixes):
                reinitialised.append(key)
                class_counts = class_counts or (value.shape[0], own[key].shape[0])
                del state[key]
            else:
                errors.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if errors:
        raise CheckpointError(f"{path}: shape mismatch for " + "; ".join(errors))
    if reinitialised and not reinit_classifier:
        raise CheckpointError(f"{path} has a classifier for {class_counts[0]} classes but the model has "
                              f"{class_counts[1]} ({reinitialised[0]}): build the model with the checkpoint's "
                              "classes, or fine-tune (+experiment=finetune) to train a new classifier")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in reinitialised]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path} ({source} layout) does not match the model: missing {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    if reinitialised:
        if hasattr(model, "reset_classifier"):
            model.reset_classifier()
        logger.warning("classifier re-initialised for fine-tuning: the checkpoint has %d classes, the model %d (%s)",
                       class_counts[0], class_counts[1], ", ".join(reinitialised))
    logger.info("loaded %s weights from %s (missing %d, unexpected %d)", source, path, len(missing), len(unexpected))
    return {"source": source, "missing": missing, "unexpected": unexpected, "reinitialised": reinitialised}


def _build_model_from_yaml(config: str, num_classes: int) -> nn.Module:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    cfg.num_classes = num_classes
    spec = OmegaConf.to_container(cfg, resolve=True)
    spec.pop("deploy", None)
    return instantiate(spec)


def main(argv: list[str] | None = None) -> int:
    """Convert ``SRC`` to a clean checkpoint ``{"model": state_dict, "meta": {...}}`` at ``DST``."""
    parser = argparse.ArgumentParser(prog="python -m solo_npu.checkpoints.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--from", dest="source", default="auto", choices=("auto", *SOURCES))
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled objects (trusted files only)")
    parser.add_argument("--model-config", help="model yaml (conf/model/...) to build and check the weights against")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of --model-config's model (default: the checkpoint's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ckpt = load_checkpoint(args.src, trust_pickle=args.trust_pickle)
        classes = checkpoint_classes(ckpt, args.source)
        if args.model_config:
            num_classes = args.num_classes or classes.num_classes
            if num_classes is None:
                raise CheckpointError(f"{args.src} does not say how many classes it has: pass --num-classes")
            model = _build_model_from_yaml(args.model_config, num_classes)
            report = load_model_weights(model, args.src, args.source, strict=False, loaded=ckpt)
            state = model.state_dict()
            source = report["source"]
            print(f"missing keys ({len(report['missing'])}): {report['missing']}")
            print(f"unexpected keys ({len(report['unexpected'])}): {report['unexpected']}")
        elif args.source in DETECTOR_KINDS.values():
            from solo_npu.checkpoints.convert_detectors import DETECTOR_CONVERTERS

            source = args.source
            state = DETECTOR_CONVERTERS[source](ckpt)
            print("missing keys: not checked (pass --model-config to check against a model)")
        else:
            state, container = extract_state_dict(ckpt)
            source = detect_source(state, container) if args.source == "auto" else args.source
            state = convert_state_dict(state, source, classes.num_classes)
            print("missing keys: not checked (pass --model-config to check against a model)")
    except CheckpointError as exc:
        print(f"error: {exc}")
        return 1
    meta: dict[str, Any] = {"source": source, "converted_from": str(Path(args.src).name)}
    if classes.names is not None:
        meta["dataset_meta"] = {"classes": list(classes.names)}
    save_checkpoint({"model": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, args.dst)
    print(f"wrote {args.dst} ({len(state)} tensors, {source} layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
