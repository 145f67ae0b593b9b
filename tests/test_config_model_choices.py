"""A model setting with a value its builder does not take (``model.backbone.norm=bnx``), or a model key the model
does not have (``model.head.norm=bn`` on SOLOv2), is one line naming the key, the value and what is allowed, before
any worker starts; before, Hydra reported them in several lines (``Error in call to target ...``, ``Could not
override ... Key 'norm' is not in struct``) after the run had started, or the value was taken silently."""

from __future__ import annotations

import subprocess
import sys

import pytest
from config_support import CONF, ROOT, compose_config
from hydra import compose, initialize_config_dir

from solo_npu.config import TrainJobConfig, register_configs
from solo_npu.config.deploy_schema import check_deploy_overrides, check_overrides
from solo_npu.config.values import ConfigValueError, check_values


@pytest.mark.parametrize("overrides, message", [
    (["model.backbone.norm=bnx"], "model.backbone.norm=bnx: must be one of bn, frozen_bn, gn"),
    (["model.backbone.style=foo"], "model.backbone.style=foo: must be one of pytorch, caffe"),
    (["model.test.kernel=foo"], "model.test.kernel=foo: must be one of gaussian, linear"),
    (["+model.neck.norm=ln"], "model.neck.norm=ln: must be one of null, gn, bn"),
    (["model=fcos", "model.head.norm=bn"], "model.head.norm=bn: must be one of none, null, gn"),
    (["model=fcos", "model.norm=sync_bn"], "model.norm=sync_bn: must be one of bn, frozen_bn, gn"),
    (["model=yolact_edge", "model.export_mode=dets"], "model.export_mode=dets: must be one of detections, heads, "
                                                       "features"),
])
def test_a_model_value_outside_its_choices_is_one_line(overrides, message):
    cfg = compose_config("+experiment=smoke", *overrides)
    with pytest.raises(ConfigValueError) as info:
        check_values(cfg)
    assert str(info.value) == message


def test_every_shipped_model_is_inside_its_choices():
    for path in sorted((CONF / "model").glob("*.yaml")):
        check_values(compose_config(f"model={path.stem}"))
    check_values(compose_config("model=fcos", "model.head.norm=GN"))  # fcos.head_norm takes any case
    check_values(compose_config("model=fcos", "model.head.norm=null"))


def test_the_choices_are_what_the_builders_take():
    """Every value of MODEL_CHOICES builds its model (on the meta device), so the check refuses nothing that works."""
    from solo_npu.config.values import MODEL_CHOICES
    from solo_npu.models import build_model

    models = {"solo_npu.models.solov2.build_solov2": "solov2_tiny", "solo_npu.models.fcos.build_fcos": "fcos",
              "solo_npu.models.yolact_edge.build_yolact_edge": "yolact_edge"}
    assert set(MODEL_CHOICES) == set(models)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for target, keys in MODEL_CHOICES.items():
            for key, allowed in keys.items():
                for value in allowed:
                    text = "null" if value is None else value
                    cfg = compose("deploy", overrides=[f"model={models[target]}", f"++model.{key}={text}"]).model
                    assert cfg._target_ == target
                    build_model(cfg, num_classes=3, device="meta")


def test_an_unknown_model_key_is_one_line():
    line = check_overrides(["model.head.norm=bn"], TrainJobConfig, CONF)
    assert line is not None and line.startswith("unknown setting model.head.norm in 'model.head.norm=bn': model.head "
                                                "of solov2_r50_fpn has no setting 'norm' (its settings: in_channels, ")
    assert check_overrides(["+experiment=smoke", "model.head.num_grid=[1]"], TrainJobConfig, CONF) == (
        "unknown setting model.head.num_grid in 'model.head.num_grid=[1]': model.head of solov2_tiny has no setting "
        "'num_grid' (did you mean model.head.num_grids?)")
    assert check_deploy_overrides(["model=fcos", "model.pretrained=none"], CONF).startswith(
        "unknown setting model.pretrained in 'model.pretrained=none': model of fcos_r50_caffe_fpn has no setting")
    for fine in (["model=fcos", "model.head.norm=gn"], ["+model.head.norm=bn"], ["~model.test.kernel"],
                 ["model.backbone.depth=101"], ["--config-dir=extra", "model.head.norm=bn"]):
        assert check_overrides(fine, TrainJobConfig, CONF) is None, fine


def test_train_py_says_it_in_one_line_before_any_worker(tmp_path):
    for override, line in (("model.head.norm=bn", "[Error] unknown setting model.head.norm in 'model.head.norm=bn': "
                                                  "model.head of solov2_tiny has no setting 'norm' (its settings: "),
                           ("model.backbone.norm=bnx", "[Error] model.backbone.norm=bnx: must be one of bn, frozen_bn, "
                                                       "gn")):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "+experiment=smoke",
                               f"data.root={tmp_path / 'data'}", f"output_root={tmp_path / 'out'}", override],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
        assert proc.stderr.strip().startswith(line), proc.stderr[-3000:]
        assert not (tmp_path / "data").exists()  # no worker started: the synthetic set was not generated


def test_deploy_py_says_it_in_one_line_before_any_stage(tmp_path):
    """deploy.py checks the model values as train.py does: model.backbone.norm=bnx was Hydra's several-line
    'Error in call to target' report, model.backbone.style=foo exported silently and model.test.kernel=foo failed
    in the export stage as an opset problem."""
    for override, line in (("model.backbone.norm=bnx", "error: model.backbone.norm=bnx: must be one of bn, "
                                                       "frozen_bn, gn"),
                           ("model.backbone.style=foo", "error: model.backbone.style=foo: must be one of pytorch, "
                                                        "caffe"),
                           ("model.test.kernel=foo", "error: model.test.kernel=foo: must be one of gaussian, linear")):
        run_dir = tmp_path / override.split("=")[0]
        proc = subprocess.run([sys.executable, str(ROOT / "deploy.py"), "model=solov2_tiny", override,
                               f"data.root={tmp_path / 'data'}", "deploy.input_shape=[128,160]", f"run_dir={run_dir}",
                               "stages=[export]", "deploy.export_formats=[onnx]", "deploy.batch_sizes=[1]"],
                              cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert (proc.returncode, proc.stderr.strip()) == (1, line), proc.stderr[-3000:]
        assert not run_dir.exists() and not (tmp_path / "data").exists()  # before any stage and any data
