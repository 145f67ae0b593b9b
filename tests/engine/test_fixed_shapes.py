"""The device presets' fixed training shapes hold on the NPU only; other settings keep them everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_support import compose_train_cfg, run_train
from omegaconf import OmegaConf

from solo_npu.config.shapes import canvas_notice, lift_fixed_shapes, scale_notice


def _shapes(cfg) -> tuple:
    return (cfg.data.pad.mode, None if cfg.data.pad.canvas is None else list(cfg.data.pad.canvas),
            cfg.data.instance_slots, cfg.model.head.pos_slots)


@pytest.mark.parametrize("preset", ["1p", "8p", "performance_8p", "[1p,eval]"])
def test_presets_pin_shapes_on_the_npu_and_lift_them_elsewhere(preset: str) -> None:
    """Training and evaluation alike: train_eval_1p.sh's ``+experiment=[1p,eval]`` evaluates on the canvas that
    train_full_*.sh trained on, on each device."""
    pinned = ("fixed", [1344, 1344], "fixed", 512)
    for device, expected, changed in (("npu", pinned, []),
                                      ("cuda", ("divisor", None, "ladder", None), 4),
                                      ("cpu", ("divisor", None, "ladder", None), 4)):
        cfg = compose_train_cfg([f"+experiment={preset}", "checkpoint=x.pth"])
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        assert _shapes(cfg) == pinned
        lifted = lift_fixed_shapes(cfg, device)
        assert _shapes(cfg) == expected, device
        assert len(lifted) == (changed or 0)
    assert cfg.data.pad.size_divisor == 32


@pytest.mark.parametrize("overrides", [["+experiment=8p", "runtime.fixed_shapes=always"],
                                       ["+experiment=[1p,eval]", "checkpoint=x.pth", "runtime.fixed_shapes=always"],
                                       ["data.pad.mode=fixed", "data.pad.canvas=[1344,1344]",
                                        "data.instance_slots=fixed", "model.head.pos_slots=512"]])
def test_explicit_fixed_shapes_keep_the_pins(overrides: list[str]) -> None:
    """``always`` (the default without a preset: pins set by hand are kept) never changes, in training or
    evaluation."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose_train_cfg(overrides), resolve=True))
    before = _shapes(cfg)
    assert before[0] == "fixed"
    assert lift_fixed_shapes(cfg, "cuda") == [] and _shapes(cfg) == before


def test_unknown_policy_is_a_one_line_error() -> None:
    cfg = OmegaConf.create(OmegaConf.to_container(compose_train_cfg(["runtime.fixed_shapes=gpu"]), resolve=True))
    with pytest.raises(ValueError, match="runtime.fixed_shapes must be one of always, npu, got 'gpu'"):
        lift_fixed_shapes(cfg, "cpu")


def test_a_cpu_training_run_uses_the_batch_canvas_under_npu_only_pins(tmp_path: Path) -> None:
    """A run on the CPU with the presets' pins (scaled to the smoke images) and ``fixed_shapes=npu`` trains
    on per-batch canvases and slots, says so once, and saves the configuration it ran."""
    pins = ["data.pad.mode=fixed", "data.pad.canvas=[192,192]", "data.instance_slots=fixed",
            "model.head.pos_slots=64", "runtime.fixed_shapes=npu", "train.eval_interval=0", "train.eval_at_end=false",
            "train.plots=false", "train.max_iters=2"]
    from solo_npu.data import collate

    seen: list[tuple[int, int]] = []
    original = collate.FixedShapeCollate.__call__

    def recording(self, items):
        batch = original(self, items)
        seen.append(tuple(batch["images"].shape[-2:]))
        return batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collate.FixedShapeCollate, "__call__", recording)
        run_train(pins, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["pad"] == {**saved["data"]["pad"], "mode": "divisor", "canvas": None}
    assert saved["data"]["instance_slots"] == "ladder" and saved["model"]["head"]["pos_slots"] is None
    assert seen and all(shape != (192, 192) and shape[0] % 32 == 0 and shape[1] % 32 == 0 for shape in seen)
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    lines = [line for line in log if "fixed_shapes=npu" in line]
    assert len(lines) == 1 and "not used on cpu" in lines[0]


def test_canvas_notice_compares_the_training_canvas_with_the_evaluation_canvas() -> None:
    fixed = {"data": {"pad": {"mode": "fixed", "canvas": [1344, 1344], "size_divisor": 32}}}
    divisor = {"data": {"pad": {"mode": "divisor", "canvas": None, "size_divisor": 32}}}
    notice = canvas_notice(fixed, divisor["data"])
    assert notice is not None and "trained on one fixed 1344x1344 canvas" in notice
    assert "uses each batch padded to a multiple of 32" in notice
    assert "data.pad.mode=fixed data.pad.canvas=[1344,1344] evaluates on it" in notice
    assert "data.pad.mode=divisor data.pad.size_divisor=32" in canvas_notice(divisor, fixed["data"])
    assert canvas_notice(fixed, fixed["data"]) is None and canvas_notice(divisor, divisor["data"]) is None
    assert canvas_notice(None, divisor["data"]) is None  # other files carry no training config


def test_a_solov2_file_without_training_config_on_a_fixed_canvas_warns() -> None:
    # SOLO (configs/solov2/solov2_r50_fpn_8gpu_1x.py, test pipeline: dict(type='Pad', size_divisor=32)) and
    # mmdetection (configs/solov2/solov2_r50_fpn_1x_coco.py: pad_size_divisor=32) test on the batch padded to 32.
    fixed = {"pad": {"mode": "fixed", "canvas": [1344, 1344], "size_divisor": 32}}
    divisor = {"pad": {"mode": "divisor", "canvas": None, "size_divisor": 32}}
    notice = canvas_notice(None, fixed, model_name="solov2_r50_fpn")
    assert notice is not None and "uses one fixed 1344x1344 canvas" in notice
    assert "data.pad.mode=divisor data.pad.size_divisor=32" in notice
    assert canvas_notice(None, divisor, model_name="solov2_r50_fpn") is None
    assert canvas_notice(None, fixed, model_name="fcos_r50_caffe_fpn") is None  # no grids over the canvas
    # a checkpoint of this project is compared with its own training canvas instead
    assert canvas_notice({"data": {"pad": fixed["pad"]}}, fixed, model_name="solov2_r50_fpn") is None


def test_evaluating_on_another_canvas_than_the_training_one_warns(tmp_path: Path) -> None:
    pins = ["data.pad.mode=fixed", "data.pad.canvas=[192,192]", "runtime.fixed_shapes=always"]
    run_train([*pins, "train.max_iters=1", "train.eval_interval=0", "train.eval_at_end=false", "train.plots=false"],
              tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.pth"
    for name, overrides, warned in (("other", [], True), ("same", pins[:2], False),
                                    ("scale", [*pins[:2], "data.img_scale=[192,160]"], False)):
        run_train([*overrides, f"checkpoint={ckpt}"], tmp_path / name, "eval")
        log = (tmp_path / name / "train.log").read_text()
        assert ("the checkpoint trained on one fixed 192x192 canvas" in log) == warned, name
        # the test scale of that run (160x128): another one is said too
        assert ("evaluated at img_scale 160x128 (long x short) and this evaluation resizes to 192x160" in log) == (
            name == "scale"), name


def test_scale_notice_compares_the_checkpoints_test_scale_or_the_light_recipes() -> None:
    ours = {"data": {"img_scale": [768, 448], "pad": {"mode": "divisor", "size_divisor": 32}}}
    coco = {"img_scale": [1333, 800]}
    notice = scale_notice(ours, coco, "solov2_r50_fpn")
    assert notice == ("the checkpoint's training run evaluated at img_scale 768x448 (long x short) and this evaluation "
                      "resizes to 1333x800: results differ from the checkpoint's own (data.img_scale=[768,448] matches "
                      "it)")
    assert scale_notice(ours, {"img_scale": [768, 448]}, "solov2_r50_fpn") is None
    # Files of other projects carry no training config: a light model is compared with its published recipes'
    # scale (SOLO's solov2_light_448 configs: img_scale=(768, 448); mmdetection's: scale=(448, 768)).
    light = scale_notice(None, coco, "solov2_light_r18_fpn", "prediction")
    assert light is not None and light.startswith("the SOLOv2-light recipes (SOLO's and mmdetection's) test at "
                                                  "img_scale 768x448 (long x short) and this prediction resizes")
    assert scale_notice(None, {"img_scale": [768, 448]}, "solov2_light_r18_fpn") is None
    assert scale_notice(None, coco, "solov2_r50_fpn") is None
    # a full-size one with theirs: SOLO, mmdetection and AdelaiDet test R50 / R101 at 1333x800, so deploy.py's
    # task=predict with its default data=synthetic (320x256) would predict at a quarter of that scale
    for name in ("solov2_r50_fpn", "solov2_r101_fpn"):
        full = scale_notice(None, {"img_scale": [320, 256]}, name, "prediction")
        assert full == ("the SOLOv2 recipes (SOLO's, mmdetection's and AdelaiDet's) test at img_scale 1333x800 (long x "
                        "short) and this prediction resizes to 320x256: results differ from the checkpoint's own "
                        "(data.img_scale=[1333,800] matches it)")
    assert scale_notice(None, {"img_scale": [320, 256]}, "solov2_tiny") is None
