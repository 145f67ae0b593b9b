"""Fixed training shapes and the devices they are for.

The device presets (``+experiment=1p`` / ``8p`` / ``performance_*``) give every training batch one shape,
because NPU operators compile again for every new input shape: each image on one square canvas
(``data.pad.mode=fixed``, 1344x1344 at 1333x800), ``data.max_instances`` ground-truth slots
(``data.instance_slots=fixed``) and a pinned number of positive slots (``model.head.pos_slots``).
On a GPU or a CPU those pins only add work (1344x1344 holds 1.7 times the pixels of an 800x1344 batch
canvas), so the presets say ``runtime.fixed_shapes=npu``: the pins hold on the NPU, and on other devices a
training run pads each batch to a multiple of ``data.pad.size_divisor`` and sizes the slots to the batch,
as a run without a preset does (and as mmdet and SOLO train). ``runtime.fixed_shapes=always`` keeps them on
every device. Evaluation runs (``mode=eval``) follow the same rule, so a preset's evaluation on a device is on the
canvas the preset trains on there. Evaluating on another canvas than the checkpoint's is a WARNING
(:func:`canvas_notice`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIXED_SHAPES_CHOICES", "FULL_TEST_SCALE", "LIGHT_TEST_SCALE", "canvas_notice", "checkpoint_notices",
           "lift_fixed_shapes", "scale_notice"]

FIXED_SHAPES_CHOICES = ("always", "npu")


def lift_fixed_shapes(cfg: Any, device_type: str) -> list[str]:
    """Undo the fixed-shape pins of ``cfg`` (in place) where ``runtime.fixed_shapes`` says they are not for
    ``device_type``; returns the ``key=value`` settings it changed (empty when nothing changed).

    ``cfg``: the job config (an OmegaConf DictConfig or a plain dict with ``runtime``, ``data`` and ``model``),
    of a training or an evaluation run (see the module docstring).
    """
    policy = str(cfg["runtime"].get("fixed_shapes", "always"))
    if policy not in FIXED_SHAPES_CHOICES:
        raise ValueError(f"runtime.fixed_shapes must be one of {', '.join(FIXED_SHAPES_CHOICES)}, got {policy!r}")
    if policy == "always" or device_type == "npu":
        return []
    changed = []
    data, head = cfg["data"], cfg["model"].get("head")
    if str(data["pad"].get("mode")) == "fixed":
        data["pad"]["mode"], data["pad"]["canvas"] = "divisor", None
        changed += ["data.pad.mode=divisor", "data.pad.canvas=null"]
    if str(data.get("instance_slots")) == "fixed":
        data["instance_slots"] = "ladder"
        changed.append("data.instance_slots=ladder")
    if head is not None and head.get("pos_slots") is not None:
        head["pos_slots"] = None
        changed.append("model.head.pos_slots=null")
    return changed


def _canvas(pad: Any) -> tuple[str, tuple[int, ...] | None]:
    mode = str(pad.get("mode", "divisor"))
    if mode == "fixed" and pad.get("canvas") is not None:
        return mode, tuple(int(v) for v in pad["canvas"])
    return mode, (int(pad.get("size_divisor", 32)),)


def _describe(canvas: tuple[str, tuple[int, ...] | None]) -> str:
    mode, value = canvas
    if mode == "fixed":
        return f"one fixed {value[0]}x{value[1]} canvas"
    return f"each batch padded to a multiple of {value[0]}"


def canvas_notice(trained: Any, data: Any, task: str = "evaluation", model_name: str | None = None) -> str | None:
    """The WARNING for evaluating (or, ``task="prediction"``, predicting) on another canvas than the checkpoint
    trained on, or ``None``.

    ``trained``: the training config a checkpoint of this project carries; ``data``: this evaluation's ``data``
    config. The SOLOv2 grids span the whole canvas, so the same image on another canvas gives other predictions.
    A SOLOv2 file of another project (``trained`` ``None``, ``model_name`` holding ``solov2``) on a fixed canvas
    is compared with the canvas SOLO's and mmdetection's published models trained and test on, each batch padded
    to a multiple of 32 (SOLO configs/solov2/*.py: ``dict(type='Pad', size_divisor=32)``; mmdetection
    configs/solov2/*.py: ``pad_size_divisor=32``).
    """
    pad = ((trained or {}).get("data") or {}).get("pad") if isinstance(trained, dict) else None
    now = _canvas(data["pad"])
    if not pad:
        if trained is None and "solov2" in str(model_name or "") and now[0] == "fixed":
            return (f"this {task} uses {_describe(now)} and the checkpoint carries no training config: SOLO's and "
                    "mmdetection's published SOLOv2 models trained and test on each batch padded to a multiple of "
                    "32 (the Ascend ModelZoo SOLOV2 port on 1344x1344), and the SOLOv2 grids span the canvas, so "
                    "predictions differ from theirs (data.pad.mode=divisor data.pad.size_divisor=32 evaluates as "
                    "they do)")
        return None
    then = _canvas(pad)
    if then == now:
        return None
    if then[0] == "fixed":
        match = f"data.pad.mode=fixed data.pad.canvas=[{then[1][0]},{then[1][1]}]"
    else:
        match = f"data.pad.mode=divisor data.pad.size_divisor={then[1][0]}"
    verb = "predicts" if task == "prediction" else "evaluates"
    return (f"the checkpoint trained on {_describe(then)} and this {task} uses {_describe(now)}: the SOLOv2 "
            f"grids span the canvas, so predictions differ from those on the training canvas ({match} {verb} "
            "on it)")


# The test scale (long, short) of the published SOLOv2-light models: WXinlong/SOLO configs/solov2/
# solov2_light_448_r50_fpn_8gpu_3x.py (img_scale=(768, 448)) and mmdetection configs/solov2/
# solov2-light_r50_fpn_ms-3x_coco.py (Resize scale=(448, 768), keep_ratio=True).
LIGHT_TEST_SCALE = (768, 448)
# The test scale of the published full-size SOLOv2 models (R50, R101, X101, DCN): SOLO configs/solov2/
# solov2_r50_fpn_8gpu_1x.py (img_scale=(1333, 800)), mmdetection configs/solov2/solov2_r50_fpn_1x_coco.py
# (Resize scale=(1333, 800)) and AdelaiDet's SOLOv2 (INPUT.MIN_SIZE_TEST 800, MAX_SIZE_TEST 1333).
FULL_TEST_SCALE = (1333, 800)


def scale_notice(trained: Any, data: Any, model_name: str | None, task: str = "evaluation") -> str | None:
    """The WARNING for evaluating (or predicting) at another test scale (``data.img_scale``) than the checkpoint's
    own, or ``None``.

    ``trained``: the training config a checkpoint of this project carries (its ``data.img_scale`` is the scale its
    run evaluated at); for other files (``None``) a SOLOv2-light model (``model_name`` holding ``light``) is
    compared with the scale its published recipes test at, :data:`LIGHT_TEST_SCALE`, and a full-size one
    (``solov2_r50_fpn``, ``solov2_r101_fpn``, ...) with :data:`FULL_TEST_SCALE`. Another scale resizes every
    image to other sizes than the weights learnt, and the AP differs from the recipe's.
    """
    now = tuple(int(v) for v in data["img_scale"])
    then = ((trained or {}).get("data") or {}).get("img_scale") if isinstance(trained, dict) else None
    if then is not None:
        then, whose = tuple(int(v) for v in then), "the checkpoint's training run evaluated"
    elif trained is None and "light" in str(model_name or ""):
        then, whose = LIGHT_TEST_SCALE, "the SOLOv2-light recipes (SOLO's and mmdetection's) test"
    elif trained is None and str(model_name or "").startswith(("solov2_r", "solov2_x")):
        then, whose = FULL_TEST_SCALE, "the SOLOv2 recipes (SOLO's, mmdetection's and AdelaiDet's) test"
    else:
        return None
    if then == now:
        return None
    return (f"{whose} at img_scale {then[0]}x{then[1]} (long x short) and this {task} resizes to {now[0]}x{now[1]}: "
            f"results differ from the checkpoint's own (data.img_scale=[{then[0]},{then[1]}] matches it)")


def checkpoint_notices(trained: Any, data: Any, model_name: str | None, task: str = "evaluation") -> list[str]:
    """The WARNINGs for evaluating (or predicting with) a checkpoint on another canvas (:func:`canvas_notice`) or at
    another test scale (:func:`scale_notice`) than its own; empty when both match."""
    notices = (canvas_notice(trained, data, task, model_name), scale_notice(trained, data, model_name, task))
    return [n for n in notices if n]
