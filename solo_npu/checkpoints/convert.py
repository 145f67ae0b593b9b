"""One way to read a checkpoint: any supported file -> (state dict, metadata, layout) -> any model.

The model decides the layouts it reads (solo_npu/models/contract.py): ``ours`` (this project's names)
and its reference layouts, e.g. SOLOv2's ``mmdet`` / ``solo`` / ``torchvision``, FCOS's ``fcos``,
YolactEdge's ``yolact_edge``, SSD-ResNet34's ``ssd_resnet34``. ``source="auto"`` asks the model
(``checkpoint_layout``), else takes ``ours`` when every key is the model's and the model's only
reference layout otherwise. Every model gets the same checks: shapes (a classifier of another size is
an error naming both class counts, unless fine-tuning) and, for layouts that fill the whole model,
no missing or unexpected keys.

A checkpoint decides its classes: :func:`checkpoint_classes` reads the count from the model's
classifier (``classifier_prefixes``) and the names from the file's metadata (mmdet 3.x
``meta.dataset_meta.classes``, mmdet 1.x/2.x ``meta.CLASSES``, this project's ``config.data.class_names``).

CLI::

    python -m solo_npu.checkpoints.convert SRC DST --from auto|ours|<layout> [--trust-pickle] \
        [--model-config conf/model/X.yaml --num-classes 80] [--allow-partial]

Without ``--model-config`` the CLI renames SOLOv2 layouts (the default model) and checks the names
against SOLOv2's (every variant has the same names up to layer and level numbers): a file with names a
SOLOv2 does not have, or without some it has (a torchvision file: the backbone's), is an error (exit 1);
shapes are not checked. With ``--model-config`` the file must fill the model: a model tensor the file
lacks, or a file tensor the model has no place for (e.g. the ``conv_offset`` of a deformable
convolution), is an error naming both counts. ``--allow-partial`` writes the tensors the file has, and
no others: never a random initialisation presented as trained weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from solo_npu.checkpoints.io import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.data.coco import class_name_key

logger = logging.getLogger(__name__)

__all__ = ["CheckpointClasses", "check_trained_input", "checkpoint_class_names", "checkpoint_classes",
           "load_model_weights", "main", "read_checkpoint", "unwrap_state_dict"]

CONTAINERS = ("model", "state_dict")  # ours / MLPerf, mmdet / SOLO / YolactEdge


def unwrap_state_dict(ckpt: Any) -> tuple[dict[str, Tensor], dict[str, Any], str | None]:
    """The tensors of a loaded checkpoint, its other top-level entries (metadata) and the container key
    the tensors came from (``model``, ``state_dict`` or ``None`` for a bare state dict). A DataParallel
    ``module.`` prefix on every key is removed.

    Raises:
        CheckpointError: not a dict, or no tensors in it.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(ckpt).__name__}, expected a dict")
    container = next((key for key in CONTAINERS if isinstance(ckpt.get(key), Mapping)), None)
    tensors = ckpt[container] if container else ckpt
    state = {k: v for k, v in tensors.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(ckpt)[:10]})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    metadata = {k: v for k, v in ckpt.items() if k != container and not isinstance(v, Tensor)}
    return state, metadata, container


def _layouts(model: Any) -> tuple[str, ...]:
    return ("ours", *getattr(model, "checkpoint_layouts", ()))


def _auto_layout(model: nn.Module | type, state: Mapping[str, Tensor], container: str | None) -> str:
    decide = getattr(model, "checkpoint_layout", None)
    layout = decide(state, container) if decide is not None else None
    if layout is not None:
        return layout
    if isinstance(model, nn.Module) and all(k in model.state_dict() for k in state):
        return "ours"
    references = _layouts(model)[1:]
    if len(references) == 1:
        return references[0]
    raise CheckpointError(f"cannot tell the checkpoint layout from its keys (first: {list(state)[:5]}); "
                          f"pass one of {_layouts(model)}")


def read_checkpoint(ckpt: Any, model: nn.Module | type, source: str = "auto",
                    num_classes: int | None = None) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """A loaded checkpoint as ``model`` reads it: (state dict in the model's names, metadata, layout).

    Args:
        model: decides the layouts (a weightless ``device="meta"`` model will do; a model class whose
            layout methods need no instance, as SOLOv2's, too).
        source: ``auto`` or a layout the model reads.
        num_classes: the classes the weights are for, passed to the model's converter (``None``: unknown).

    Raises:
        CheckpointError: not a state dict, a layout the model does not read, or a bad reference file.
    """
    state, metadata, container = unwrap_state_dict(ckpt)
    layout = _auto_layout(model, state, container) if source == "auto" else source
    if layout not in _layouts(model):
        name = model.__name__ if isinstance(model, type) else type(model).__name__
        raise CheckpointError(f"{name} does not read {layout!r} checkpoints: it reads "
                              f"{_layouts(model)} (or auto)")
    if layout != "ours":
        state = model.convert_state_dict(state, layout, num_classes)
    return state, metadata, layout


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
    # mmdet 3.0.0rc files keep upper-case dataset_meta keys (mmdet/apis/inference.py init_detector lower-cases
    # them: "mmdet 3.x, all keys should be lowercase").
    for where, value in (("meta.dataset_meta.classes", dataset_meta.get("classes")),
                         ("meta.dataset_meta.CLASSES", dataset_meta.get("CLASSES")),
                         ("meta.CLASSES", meta.get("CLASSES")), ("config.data.class_names", data.get("class_names"))):
        names = _names(value)
        if names is not None:
            return names, where
    return None, ""


def checkpoint_classes(ckpt: Any, model: nn.Module | type | None = None, source: str = "auto",
                       path: str | os.PathLike | None = None,
                       names_instead: Sequence[str] | None = None,
                       hint: str = "data.class_names=[...]") -> CheckpointClasses:
    """The class count (and names) of a loaded checkpoint, as ``model`` reads it.

    The count is the output channels of the model's classifier (the first of ``classifier_prefixes``,
    in the model's names) in the file; every output is a class (original SOLO classifiers have no
    background channel either, see :mod:`solo_npu.models.solov2.checkpoint`). Names come from the
    metadata. A model without a classifier (or no model) counts the names only. ``path``: the file ``ckpt``
    was read from, named by the error. ``names_instead``: names to use, with a WARNING, when the file's disagree
    with its classifier and these have one per output (an mmdet 3.x model trained without its ``metainfo``
    keeps COCO's 80 names for a classifier of its own classes); ``hint``: the setting that gives such names, named
    by the error.

    Raises:
        CheckpointError: the names disagree with the classifier (and ``names_instead`` does not fit it).
    """
    names, names_at = checkpoint_class_names(ckpt)
    prefixes = tuple(getattr(model, "classifier_prefixes", ()))
    weight, key = None, None
    if prefixes:
        key = prefixes[0] + "weight"
        try:
            weight = read_checkpoint(ckpt, model, source)[0].get(key)
        except CheckpointError:
            weight = None
    if weight is None:
        return CheckpointClasses(None if names is None else len(names), names, names_at)
    outputs = int(weight.shape[0])
    if names is None or len(names) == outputs:
        return CheckpointClasses(outputs, names, key)
    what = "the checkpoint's" if path is None else f"{path}: its"
    if names_instead is not None and len(names_instead) == outputs:
        shown = ", ".join(str(n) for n in names_instead[:5]) + (" ..." if len(names_instead) > 5 else "")
        logger.warning("%s classifier (%s) has %d outputs but %s names %d classes: its classes are named by "
                       "data.class_names (%s)", what, key, outputs, names_at, len(names), shown)
        return CheckpointClasses(outputs, tuple(str(n) for n in names_instead), key)
    given = "" if names_instead is None else f" ({hint.split('=')[0].split(' ')[0]} gives {len(names_instead)})"
    raise CheckpointError(f"{what} classifier ({key}) has {outputs} outputs but {names_at} names {len(names)} "
                          f"classes{given}: name its classes with {hint} ({outputs} names)")


def _match_class_names(state: dict[str, Tensor], ckpt: Any, class_names: Sequence[str],
                       prefixes: tuple[str, ...], path: str | os.PathLike) -> tuple[list[str], str | None]:
    """Compare the checkpoint's class names with ``class_names`` (label order) when the classifier in
    ``state`` has one output per name. Same names in another order: the classifier rows of ``state`` are
    put in label order (changed in place). Returns (keys reordered, the WARNING to log or ``None``).

    Reordering rather than refusing: every output channel of these classifiers is one class's own
    sigmoid logit (SOLOv2's and FCOS's focal-loss classifiers) and nothing else in the model is indexed
    by class, so permuting the output rows (weight and bias) is exactly the trained classifier with the
    dataset's label numbers. A file whose names are not channel k's name k (mmdet names channel k
    ``CLASSES[k]`` in its own results and visualisation) cannot be told apart, nor a file without names.
    """
    names, names_at = checkpoint_class_names(ckpt)
    weight = state.get(prefixes[0] + "weight") if prefixes else None
    if names is None or weight is None or int(weight.shape[0]) != len(class_names):
        return [], None  # no names, or another class count (the class-count check decides)
    if len(names) != len(class_names):
        return [], (f"{path}: {names_at} names {len(names)} classes but its classifier has {len(class_names)} "
                    "outputs: class names not compared")
    ours, theirs = [class_name_key(n) for n in class_names], [class_name_key(n) for n in names]
    if ours == theirs:
        return [], None
    if sorted(ours) == sorted(theirs) and len(set(ours)) == len(ours):
        order = [theirs.index(n) for n in ours]
        keys = [k for k in state if k.startswith(prefixes)]
        bad = [k for k in keys if state[k].dim() == 0 or state[k].shape[0] != len(order)]
        if bad:
            raise CheckpointError(f"{path} lists the dataset's classes in another order ({names_at}) but its "
                                  f"classifier cannot be reordered by name ({bad[0]}: {tuple(state[bad[0]].shape)})")
        for key in keys:
            state[key] = state[key][order]
        moved = [f"label {i} {class_names[i]!r} <- channel {j}" for i, j in enumerate(order) if i != j]
        # mmdet numbers the categories its classes select in the annotation file's order (get_cat_ids filters
        # the file's categories list), not in the order of the classes it stores: its names follow the channels
        # only when the file it trained on listed the categories in that order
        caveat = ("; mmdet numbered the classes in the order its training annotation file listed them, so this "
                  "is right when that file listed them in the order of the names it stored: if it listed them as "
                  "this dataset does, the channels were already in label order and the reordered classifier is "
                  "wrong: name them in that order with python -m solo_npu.checkpoints.convert SRC DST --class-names "
                  f"{','.join(str(n) for n in class_names[:3])}{',...' if len(class_names) > 3 else ''}") \
            if names_at.startswith("meta.") else ""
        return keys, (f"{path} has the dataset's {len(order)} classes in another order ({names_at}): classifier "
                      f"channels reordered by name ({len(moved)} moved: {', '.join(moved[:3])}"
                      f"{', ...' if len(moved) > 3 else ''}){caveat}")
    diffs = [f"label {i}: {a!r} in the checkpoint, {b!r} in the dataset"
             for i, (a, b) in enumerate(zip(names, class_names)) if class_name_key(a) != class_name_key(b)]
    return [], (f"{path} was trained on other classes than the dataset's ({names_at}; {len(diffs)} of "
                f"{len(names)} names differ: {'; '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''}): its "
                "classifier is used as it is, channel k for label k")


def unshared_keys(own: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(the model's tensors the file lacks, a BatchNorm's ``num_batches_tracked`` aside; the file's tensors the model
    has no place for), of a model's state dict ``own`` and a file's ``state``."""
    return ([k for k in own if k not in state and not k.endswith("num_batches_tracked")],
            [k for k in state if k not in own])


def _other_keys(own: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """What else the file and the model do not share, for a shape-mismatch error: a file of another model (an FCOS
    file given to SOLOv2) also holds modules the model lacks and lacks the model's."""
    missing, unexpected = unshared_keys(own, state)
    if not missing and not unexpected:
        return ""
    modules = sorted({".".join(k.split(".")[:2]) for k in unexpected})
    shown = ", ".join(modules[:3]) + (", ..." if len(modules) > 3 else "")
    return (f"; besides, {len(missing)} of the model's tensors are not in the file and {len(unexpected)} of the "
            f"file's are not in the model{f' ({shown})' if modules else ''}: a checkpoint of another model or "
            "another depth, width or head (pick the model= that trained it)")


def require_whole_model(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse, as a one-line CheckpointError, weights that left part of a trained model unset: a file given as the
    model (``checkpoint=``) must fill every tensor (a FrozenBatchNorm's missing ``num_batches_tracked`` aside) and
    hold nothing the model lacks. ``report``: what :func:`load_model_weights` returned."""
    missing = [k for k in report["missing"] if not k.endswith("num_batches_tracked")]
    if report["source"] == "torchvision" and (missing or report["unexpected"]):
        # torchvision's ImageNet ResNets hold a backbone only (torchvision/models/resnet.py): the neck and the
        # heads would stay random.
        raise CheckpointError(f"{path} ({len(missing)} model tensors missing, {len(report['unexpected'])} "
                              "unexpected) holds only a ResNet under torchvision's names: ImageNet weights start a "
                              "training run as model.pretrained=PATH; checkpoint= needs a whole model")
    if missing and not report["unexpected"] and set(missing) <= set(report.get("partial_missing") or ()):
        # the conversion left exactly these out (its meta.partial says so): not another model's file
        raise CheckpointError(f"checkpoint {path} was converted with --allow-partial and lacks {len(missing)} of the "
                              f"model's tensors {missing[:5]}: they would stay random (convert a file that has "
                              "them; ImageNet backbone weights start a training run as model.pretrained=PATH)")
    if missing or report["unexpected"]:
        raise CheckpointError(f"checkpoint {path} does not match the model: {len(missing)} missing "
                              f"{missing[:5]}, {len(report['unexpected'])} unexpected {report['unexpected'][:5]} "
                              "(another depth, width or head than the model config: pick the model= that "
                              "trained it)")


def load_model_weights(model: nn.Module, path: str | os.PathLike, source: str = "auto", trust_pickle: bool = False,
                       strict: bool | None = None, reinit_classifier: bool = False,
                       loaded: Any = None, class_names: Sequence[str] | None = None,
                       normalize: Mapping[str, Any] | None = None, check_input: bool = True) -> dict[str, Any]:
    """Load a checkpoint of any layout ``model`` reads into it (:func:`read_checkpoint`).

    A classifier of another size (the model's ``classifier_prefixes``) is an error naming both class
    counts, unless ``reinit_classifier`` (fine-tuning): then it is skipped and re-initialised with
    ``model.reset_classifier()``, with a WARNING. Any other shape mismatch is an error naming the key and
    both shapes.

    With ``class_names`` (the dataset's, in label order) and class names in the file's metadata
    (:func:`checkpoint_class_names`) for a classifier of the same size: the same names in another order
    reorder the classifier's channels by name, with a WARNING that says so; other names (the same
    count) are a WARNING naming the first differences. Names compare case-insensitively, ``_`` as a
    space. See :func:`_match_class_names` for why reordering is exact.

    Args:
        source: ``auto`` or a layout the model reads.
        trust_pickle: allow pickled Python objects in the file (old mmcv checkpoints).
        strict: require every model key (except a re-initialised classifier) and no unexpected keys.
            Default: True, except for the model's ``partial_checkpoint_layouts`` (a backbone only).
        reinit_classifier: allow a classifier trained on another number of classes to be replaced
            by a fresh one (fine-tuning only).
        loaded: the checkpoint already read from ``path`` (read once by callers that inspect it first).
        class_names: the names of the model's labels 0..N-1 (the dataset's), or ``None``: not compared.
        normalize: the data config's pixel normalisation (``style``, ``mean``, ``std``), compared by the
            model's ``check_checkpoint_input`` with what the layout's weights were trained on (for a converted
            file, the layout its ``meta.source`` names); ``None``: only the model itself is compared.
        check_input: ``False`` skips that comparison (a conversion that only renames).

    Returns:
        ``{"source", "missing", "unexpected", "reinitialised", "reordered", "config"}`` (``source``: the
        layout read; ``reordered``: classifier keys whose channels were put in the dataset's order;
        ``config``: the training config a checkpoint of this project carries, else ``None``).

    Raises:
        CheckpointError: unreadable file, unknown layout, shape or class-count mismatch, strict key
            mismatch, or a classifier that the names say to reorder but that has no row per class.
    """
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle) if loaded is None else loaded
    try:
        state, metadata, source = read_checkpoint(ckpt, model, source, _model_num_classes(model))
        if check_input:
            _check_input(model, source, metadata, normalize)
    except CheckpointError as exc:
        raise CheckpointError(_with_path(exc, path)) from exc
    if strict is None:
        strict = source not in getattr(model, "partial_checkpoint_layouts", ())

    own = model.state_dict()
    cls_prefixes = tuple(getattr(model, "classifier_prefixes", ()))
    reinitialised, errors, class_counts = [], [], None
    for key, value in list(state.items()):
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            if cls_prefixes and key.startswith(cls_prefixes):
                reinitialised.append(key)
                class_counts = class_counts or (value.shape[0], own[key].shape[0])
                del state[key]
            else:
                errors.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    if errors:
        raise CheckpointError(f"{path}: shape mismatch for {len(errors)} tensors, " + "; ".join(errors[:3])
                              + ("; ..." if len(errors) > 3 else "") + _other_keys(own, state))
    if reinitialised and not reinit_classifier:
        raise CheckpointError(f"{path} has a classifier for {class_counts[0]} classes but the model has "
                              f"{class_counts[1]} ({reinitialised[0]}), the data's: use data of the file's "
                              f"{class_counts[0]} classes (an annotation file with them, or data.class_names naming "
                              "them), or fine-tune it (+experiment=finetune) to train a classifier for these")
    reordered, names_warning = [], None
    if class_names is not None and not reinitialised:
        reordered, names_warning = _match_class_names(state, ckpt, class_names, cls_prefixes, path)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in reinitialised]
    unexpected = list(result.unexpected_keys)
    # A BatchNorm counter, not a weight: FrozenBatchNorm files (detectron2) and torch < 0.4.1 have none.
    weights_missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
    if strict and (weights_missing or unexpected):
        raise CheckpointError(f"{path} ({source} layout) does not match the model: missing {weights_missing[:10]}"
                              f"{' ...' if len(weights_missing) > 10 else ''}, unexpected {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    if reinitialised:
        if hasattr(model, "reset_classifier"):
            model.reset_classifier()
        logger.warning("classifier re-initialised for fine-tuning: the checkpoint has %d classes, the model %d (%s)",
                       class_counts[0], class_counts[1], ", ".join(reinitialised))
    if names_warning is not None:
        logger.warning("%s", names_warning)
    logger.info("loaded %s weights from %s (missing %d, unexpected %d)", source, path, len(missing), len(unexpected))
    meta = metadata.get("meta") if isinstance(metadata.get("meta"), Mapping) else {}
    partial = meta.get("partial")
    absent: list[str] = []
    if isinstance(partial, Mapping) and (partial.get("missing") or partial.get("dropped")):
        dropped, absent = list(partial.get("dropped") or []), list(partial.get("missing") or [])
        # the dropped tensors are ones this model has no place for; the absent ones (the model's, not in the file)
        # are refused as checkpoint= by require_whole_model
        logger.warning("%s was converted with --allow-partial: %d tensors of its source were dropped %s (this model "
                       "has no place for them) and %d of the model's were not in the file %s (see its meta.partial)",
                       path, len(dropped), few_keys(dropped), len(absent), few_keys(absent))
    config = ckpt.get("config") if isinstance(ckpt, Mapping) and isinstance(ckpt.get("config"), Mapping) else None
    return {"source": source, "missing": missing, "unexpected": unexpected, "reinitialised": reinitialised,
            "reordered": reordered, "config": config or None, "partial_missing": absent}


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config tree as ``{"a.b.c": value}`` (mappings descended into, anything else a value)."""
    out: dict[str, Any] = {}
    for key, value in (node.items() if isinstance(node, Mapping) else ()):
        if isinstance(value, Mapping):
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def model_choice_of(name: str) -> str | None:
    """The ``model=`` choice (a file of conf/model) whose ``name:`` is ``name``, where this checkout has one."""
    from solo_npu.config import CONF_DIR

    folder = CONF_DIR / "model"
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        for line in path.read_text().splitlines():
            if line.startswith("name:") and line.split(":", 1)[1].split("#")[0].strip() == name:
                return path.stem
    return None


def trained_model_hint(ckpt: Any, model_cfg: Any) -> str:
    """For a checkpoint of this project, what rebuilds the model of its training config (``config.model``): the
    ``model=`` choice of that model where it is another than ``model_cfg``'s (the model config of this run) and
    conf/model has it, then the settings the file's model has otherwise than that choice (or than ``model_cfg``)
    as ``++model.`` overrides; ``""`` when there are none or the file has no config."""
    from omegaconf import DictConfig, OmegaConf

    config = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    trained = flat_settings(config.get("model") if isinstance(config, Mapping) else None)
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=False)
    choice = None
    name = trained.get("name")
    if isinstance(name, str) and name != (model_cfg or {}).get("name"):
        choice = model_choice_of(name)
        if choice is not None:
            from solo_npu.config import CONF_DIR

            model_cfg = OmegaConf.to_container(load_model_yaml(CONF_DIR / "model" / f"{choice}.yaml"), resolve=False)
    built = flat_settings(model_cfg)
    skip = ("_target_", "num_classes", "name", "pretrained", "deploy.", "test.")
    # A setting the run's model config leaves to the builder's default (make demo's base_channels=32 on a light R18
    # config that does not name it) is named too, unless the file's model is another builder's.
    same_builder = trained.get("_target_") == built.get("_target_")
    differ = [f"++model.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in trained.items()
              if not k.startswith(skip) and (k in built and built[k] != v or k not in built and same_builder)]
    words = [f"model={choice}", *differ] if choice else differ
    return f": its training config built another model, add {' '.join(words)}" if words else ""


def _check_input(model: nn.Module, source: str, metadata: Mapping[str, Any],
                 normalize: Mapping[str, Any] | None) -> None:
    """The input the weights were trained on against this run's: the model's ``check_checkpoint_input`` for the
    layout they came from (``source``, or for a file of our names the layout its ``meta.source`` says it was
    converted from), and for a checkpoint of this project the backbone style and pixel normalisation its
    training config names."""
    check = getattr(model, "check_checkpoint_input", None)
    if check is not None:
        meta = metadata.get("meta") if isinstance(metadata.get("meta"), Mapping) else {}
        converted_from = meta.get("source") if source == "ours" else None
        # mmdet 1.x/2.x keep the config text as meta.config, mmengine (mmdet 3.x) as meta.cfg
        config_text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else meta.get("config")
        check(converted_from if isinstance(converted_from, str) else source, normalize, config_text=config_text)
    if source == "ours":
        check_trained_input(model, metadata.get("config"), normalize)


def check_trained_input(model: nn.Module, config: Any, normalize: Mapping[str, Any] | None) -> None:
    """CheckpointError naming the settings to add when the training ``config`` a checkpoint of this project
    carries names another backbone style (than ``model``'s) or pixel normalisation (than ``normalize``, the
    run's ``data.normalize``; ``None``: not compared) than this run has. Nothing without a config."""
    if not isinstance(config, Mapping):
        return
    trained, now = {}, {}
    style = ((config.get("model") or {}).get("backbone") or {}).get("style")
    own_style = getattr(getattr(model, "backbone", None), "style", None)
    if isinstance(style, str) and isinstance(own_style, str):
        trained["model.backbone.style"], now["model.backbone.style"] = style, own_style
    trained_norm = (config.get("data") or {}).get("normalize")
    if isinstance(trained_norm, Mapping) and normalize is not None:
        for key, (then, value) in zip(("style", "mean", "std"), zip(_pixels(trained_norm), _pixels(normalize))):
            trained[f"data.normalize.{key}"], now[f"data.normalize.{key}"] = then, value
    wrong = [key for key in trained if trained[key] != now[key]]
    if wrong:
        def setting(key: str, value: Any) -> str:
            return f"{key}={value}" if isinstance(value, str) else f"{key}=[{','.join(f'{v:g}' for v in value)}]"

        raise CheckpointError(
            f"the checkpoint was trained with {', '.join(setting(k, trained[k]) for k in wrong)} (its config) but "
            f"this run has {', '.join(setting(k, now[k]) for k in wrong)}: the weights only fit the input they "
            f"were trained on; add " + " ".join(f"'{setting(k, trained[k])}'" if "[" in setting(k, trained[k])
                                               else setting(k, trained[k]) for k in wrong))


def _pixels(normalize: Mapping[str, Any]) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """(style, mean, std) of a ``data.normalize`` config, a null mean or std being the style's default
    (:class:`solo_npu.data.transforms.Normalize`), the numbers rounded to 4 decimals."""
    from solo_npu.data.transforms import pixel_normalization

    style, mean, std = pixel_normalization(str(normalize.get("style") or "pytorch"), normalize.get("mean"),
                                           normalize.get("std"))
    return style, tuple(round(v, 4) for v in mean), tuple(round(v, 4) for v in std)


def _with_path(exc: CheckpointError, path: str | os.PathLike) -> str:
    """``exc``'s message naming ``path``: the readers of a loaded checkpoint (:func:`read_checkpoint`, the models'
    converters) do not know the file it came from."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def _solov2_name_mismatch(state: Mapping[str, Tensor], layout: str) -> tuple[list[str], list[str]]:
    """(SOLOv2 names the file lacks, the file's names SOLOv2 does not have), layer and level numbers
    written ``#``. A torchvision file is only asked for the backbone; no file for BatchNorm counters."""
    from solo_npu.models.solov2.model import SOLOv2, build_solov2

    def pattern(key: str) -> str:
        return re.sub(r"\d+", "#", key)

    with torch.device("meta"):
        names = {pattern(k) for k in build_solov2(num_classes=1).state_dict()}
    found = {pattern(k) for k in state}
    partial = layout in SOLOv2.partial_checkpoint_layouts
    required = {n for n in names
                if not n.endswith("num_batches_tracked") and (not partial or n.startswith("backbone."))}
    return sorted(required - found), [k for k in state if pattern(k) not in names]


def few_keys(keys: Sequence[str], count: int = 3) -> str:
    """The first ``count`` of ``keys`` for a message: ``[a, b, c, ...]``."""
    return "[" + ", ".join(keys[:count]) + (", ..." if len(keys) > count else "") + "]"


def load_model_yaml(path: str | os.PathLike) -> Any:
    """A model yaml of ``conf/model/`` with its Hydra ``defaults`` list resolved (``solov2.yaml`` is
    ``solov2_r50.yaml`` plus its deploy settings): each named file of the same folder, merged in order, the
    file's own values where ``_self_`` stands (last when it is not listed, as Hydra >= 1.1 composes)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--model-config {path}: no such file")
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", None) if "defaults" in cfg else None
    if not defaults:
        return cfg
    merged, own = OmegaConf.create(), False
    for entry in defaults:
        if entry == "_self_":
            merged, own = OmegaConf.merge(merged, cfg), True
        elif isinstance(entry, str):
            merged = OmegaConf.merge(merged, load_model_yaml(path.parent / f"{entry}.yaml"))
        else:
            raise CheckpointError(f"--model-config {path}: its defaults entry {entry!r} names a config group; pass "
                                  "the model yaml it selects")
    return merged if own else OmegaConf.merge(merged, cfg)


CLASS_NAMES_HINT = "--class-names NAME,NAME,..."


def _given_names(classes: CheckpointClasses, names: list[str] | None, path: str) -> CheckpointClasses:
    """``classes`` named by ``--class-names`` (one name per classifier output), or as they are without it.

    Raises:
        CheckpointError: the names are not one per output of the file's classifier.
    """
    if names is None:
        return classes
    if classes.num_classes is not None and len(names) != classes.num_classes:
        raise CheckpointError(f"{path}: --class-names gives {len(names)} names but its classifier has "
                              f"{classes.num_classes} outputs")
    return CheckpointClasses(len(names), tuple(names), classes.origin)


def main(argv: list[str] | None = None) -> int:
    """Convert ``SRC`` to a clean checkpoint ``{"model": state_dict, "meta": {...}}`` at ``DST``."""
    from solo_npu.models import SOLOv2, build_model

    parser = argparse.ArgumentParser(prog="python -m solo_npu.checkpoints.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--from", dest="source", default="auto", help="auto, ours or a layout the model reads")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled objects (trusted files only)")
    parser.add_argument("--model-config", help="model yaml (conf/model/...) to build and check the weights against "
                        "(default: rename SOLOv2 layouts without checks)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of --model-config's model (default: the checkpoint's)")
    parser.add_argument("--class-names", default=None,
                        help="comma-separated names of the classifier's outputs, in order, written into DST (for a "
                        "file whose names disagree with its classifier, e.g. an mmdet 3.x model trained without "
                        "its metainfo, which keeps COCO's 80 names)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with --model-config: accept a file that lacks some model tensors or has tensors the "
                        "model has no place for, and write only the file's tensors the model has")
    args = parser.parse_args(argv)
    if args.num_classes is not None and not args.model_config:
        parser.error("--num-classes sets the classes of --model-config's model; without --model-config the file "
                     "is renamed as it is (its classes are its classifier's)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = None if args.class_names is None else [n.strip() for n in args.class_names.split(",")]
    if names is not None and (not all(names) or len(set(names)) != len(names)):
        parser.error(f"--class-names={args.class_names!r}: give distinct, non-empty names separated by commas")
    partial: dict[str, list[str]] | None = None
    try:
        ckpt = load_checkpoint(args.src, trust_pickle=args.trust_pickle)
        if args.model_config:
            config = load_model_yaml(args.model_config)
            layout_reader = build_model(config, num_classes=args.num_classes or 1, device="meta")
            classes = _given_names(checkpoint_classes(ckpt, layout_reader, args.source, args.src, names,
                                                      CLASS_NAMES_HINT), names, args.src)
            num_classes = args.num_classes or classes.num_classes
            if num_classes is None:
                raise CheckpointError(f"{args.src} does not say how many classes it has: pass --num-classes")
            model = build_model(config, num_classes=num_classes)
            report = load_model_weights(model, args.src, args.source, strict=False, loaded=ckpt, check_input=False)
            source, missing, unexpected = report["source"], report["missing"], report["unexpected"]
            # A BatchNorm counter, not a weight (files of torch < 0.4.1 lack it): the model's 0 is written.
            counters = [k for k in missing if k.endswith("num_batches_tracked")]
            missing = [k for k in missing if k not in counters]
            if (missing or unexpected) and not args.allow_partial:
                raise CheckpointError(
                    f"{args.src} ({source} layout) does not fill {args.model_config}: {len(missing)} model tensors "
                    f"missing from the file {few_keys(missing)}, {len(unexpected)} file tensors the model has no place "
                    f"for {few_keys(unexpected)}; pass --allow-partial to write only the file's tensors")
            print(f"missing keys ({len(missing)}): {missing}")
            print(f"unexpected keys ({len(unexpected)}): {unexpected}")
            if counters:
                print(f"{len(counters)} num_batches_tracked counters not in the file: written as the model's 0")
            state = model.state_dict()
            if missing or unexpected:  # --allow-partial
                partial = {"missing": missing + counters, "dropped": unexpected}
                absent = set(partial["missing"])
                state = {k: v for k, v in state.items() if k not in absent}
        else:
            classes = _given_names(checkpoint_classes(ckpt, SOLOv2, args.source, args.src, names, CLASS_NAMES_HINT),
                                   names, args.src)
            state, _, source = read_checkpoint(ckpt, SOLOv2, args.source, classes.num_classes)
            if source in SOLOv2.partial_checkpoint_layouts and not args.allow_partial:
                # the written file would hold a backbone under SOLOv2's names: neither checkpoint= (a whole model)
                # nor model.pretrained (torchvision's names) takes it
                raise CheckpointError(f"{args.src} holds ImageNet ResNet weights ({source} layout), no SOLOv2 to "
                                      "convert: train from it as it is with model.pretrained=PATH")
            lacking, unknown = _solov2_name_mismatch(state, source)
            if (lacking or unknown) and not args.allow_partial:
                raise CheckpointError(
                    f"{args.src} ({source} layout) does not have SOLOv2's names: {len(unknown)} tensors a SOLOv2 has "
                    f"no place for {few_keys(unknown)}, {len(lacking)} SOLOv2 names missing {few_keys(lacking)}; pass "
                    "--model-config to check it against a model, or --allow-partial to write the SOLOv2 tensors "
                    "it has")
            if lacking or unknown:  # --allow-partial
                partial = {"missing": lacking, "dropped": unknown}
                state = {k: v for k, v in state.items() if k not in unknown}
            print("missing keys: not checked against a model (pass --model-config to check the shapes too)")
    except CheckpointError as exc:
        print(f"error: {_with_path(exc, args.src)}")
        return 1
    meta: dict[str, Any] = {"source": source, "converted_from": str(Path(args.src).name)}
    src_meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    for key in ("cfg", "config"):  # the training config text of mmdet / SOLO files: the input check reads it
        if isinstance(src_meta.get(key), str):
            meta[key] = src_meta[key]
    for key in ("epoch", "iter"):  # mmcv's meta=dict(epoch=..., iter=...): evaluation and fine-tuning name it
        if isinstance(src_meta.get(key), int) and not isinstance(src_meta.get(key), bool):
            meta[key] = src_meta[key]
    if partial is not None:
        meta["partial"] = partial
    if classes.names is not None:
        meta["dataset_meta"] = {"classes": list(classes.names)}
    out: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("config"), Mapping):
        out["config"] = ckpt["config"]  # a checkpoint of this project: the input its weights were trained on
    save_checkpoint(out, args.dst)
    print(f"wrote {args.dst} ({len(state)} tensors, {source} layout)")
    if source == "adelaidet":
        from solo_npu.models.solov2.checkpoint import ADELAIDET_OVERRIDES

        print(f"NOTE: AdelaiDet SOLOv2 weights expect a caffe-style ResNet fed BGR pixels: load {args.dst} with "
              f"{ADELAIDET_OVERRIDES}")
    if partial is not None:
        print(f"--allow-partial: {args.dst} holds only the file's tensors: the {len(partial['missing'])} model tensors "
              f"missing from the file are NOT in it, the {len(partial['dropped'])} unexpected ones were dropped "
              "(listed in its meta.partial)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
