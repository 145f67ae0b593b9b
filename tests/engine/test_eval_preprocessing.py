"""train.py's evaluation (mode=eval) of a model with pre-processing of its own (FCOS: mmdet's caffe pipeline, BGR
with the caffe mean and std 1; YolactEdge: every image stretched to 550x550) stops with one line before any data
is generated or a worker starts when the data config would feed it other pixels. It used to resize and normalise
every image as the data config says (RGB, the ImageNet mean and std) and report the AP of those pixels without a
word. The expected values are the model's own ``preprocessing``."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import compose_train_cfg, refused_at_start
from omegaconf import OmegaConf

from solo_npu.config.values import ConfigValueError, check_eval_preprocessing
from solo_npu.data.transforms import pixel_normalization
from solo_npu.models.fcos import FCOS

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_train_cfg(["+experiment=[smoke,eval]", "checkpoint=x.pth", *overrides]),
                                  resolve=True)


def _text(values) -> str:
    return "[" + ",".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values) + "]"


def _fcos_overrides() -> list[str]:
    """The overrides that give the data config FCOS's own pre-processing (read from the model class)."""
    style, mean, std = pixel_normalization(FCOS.preprocessing.style, FCOS.preprocessing.mean, FCOS.preprocessing.std)
    return [f"data.normalize.style={style}", f"data.normalize.mean={_text(mean)}", f"data.normalize.std={_text(std)}",
            "data.img_scale=[1333,800]", f"data.pad.position={FCOS.preprocessing.pad_position}"]


FCOS_LINE = (
    "model=fcos: the data config's pre-processing differs from FCOS's own (data.normalize.style=pytorch (RGB) "
    "against the model's caffe (BGR); mean [123.675,116.28,103.53] against [102.9801,115.9465,122.7717]; std "
    "[58.395,57.12,57.375] against [1,1,1]; data.img_scale=[160,128] against the model's [1333,800] (its 800x1333 "
    "input)), which would give a wrong AP; add data.normalize.style=caffe "
    "data.normalize.mean=[102.9801,115.9465,122.7717] data.normalize.std=[1,1,1] data.img_scale=[1333,800]")


def test_fcos_with_the_data_configs_pixels_is_refused_naming_the_overrides() -> None:
    with pytest.raises(ConfigValueError) as info:
        check_eval_preprocessing(_cfg("model=fcos"), "fcos")
    assert str(info.value) == FCOS_LINE


def test_the_named_overrides_make_it_evaluable() -> None:
    check_eval_preprocessing(_cfg("model=fcos", *_fcos_overrides()), "fcos")
    overrides = FCOS_LINE.split("; add ", 1)[1].split()
    check_eval_preprocessing(_cfg("model=fcos", *overrides), "fcos")  # the line's own overrides are enough


@pytest.mark.parametrize("left_out, named", [
    ("data.normalize.mean", "mean [103.53,116.28,123.675] against [102.9801,115.9465,122.7717]"),  # caffe's default
    ("data.img_scale", "data.img_scale=[160,128] against the model's [1333,800]"),
    ("data.pad.position", "data.pad.position=centre against the model's top_left"),
])
def test_each_difference_is_named(left_out: str, named: str) -> None:
    overrides = [o for o in _fcos_overrides() if not o.startswith(left_out + "=")]
    if left_out == "data.pad.position":
        overrides.append("data.pad.position=centre")
    with pytest.raises(ConfigValueError, match="differs from FCOS's own") as info:
        check_eval_preprocessing(_cfg("model=fcos", *overrides), "fcos")
    assert named in str(info.value) and str(info.value).count(" against ") == 1, str(info.value)


def test_the_scale_is_the_models_input() -> None:
    """model.deploy.input_shape is the input the model's pre-processing fits every image to."""
    overrides = [o for o in _fcos_overrides() if not o.startswith("data.img_scale=")]
    check_eval_preprocessing(_cfg("model=fcos", *overrides, "model.deploy.input_shape=[1,3,128,160]"), "fcos")


def test_a_stretching_model_names_deploy_py() -> None:
    with pytest.raises(ConfigValueError) as info:
        check_eval_preprocessing(_cfg("model=yolact_edge"), "yolact_edge")
    assert str(info.value) == (
        "model=yolact_edge: YolactEdge's own pre-processing stretches every image to its 550x550 input (resize "
        "stretch), which train.py's evaluation (keep-ratio resize to data.img_scale) cannot do; python deploy.py "
        "model=yolact_edge checkpoint=PATH evaluates it on that input")


@pytest.mark.parametrize("overrides", [[], ["data.normalize.style=caffe", "data.img_scale=[999,500]",
                                            "data.pad.position=centre"]])
def test_solov2_takes_the_data_configs_preprocessing(overrides: list[str]) -> None:
    check_eval_preprocessing(_cfg("model=solov2_tiny", *overrides), "solov2_tiny")
    check_eval_preprocessing(_cfg("model=solov2", *overrides), "solov2")


def test_training_is_not_this_check() -> None:
    check_eval_preprocessing(_cfg("model=fcos", "mode=train"), "fcos")  # check_trainable refuses it


def test_train_py_says_it_in_one_line_before_any_data_or_worker(tmp_path: Path) -> None:
    assert refused_at_start(tmp_path, "+experiment=[smoke,eval]", "model=fcos", "checkpoint=x.pth") == \
        f"[Error] {FCOS_LINE}"
