"""A training scale whose instances can exceed the head's last scale range is a WARNING: SOLO's target assignment
puts an instance on the levels whose range holds sqrt(w * h) of its box, so a larger one is on none and trains as
background (a light model yaml alone at coco's 1333x800)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from solo_npu.config import register_configs
from solo_npu.engine.job import scale_range_notice

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def resolved(*overrides: str):
    register_configs()
    with initialize_config_dir(CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(("overrides", "largest"), [
    (["model=solov2_light_r18"], 1033),               # coco's 1333x800 against ranges that end at 896
    (["model=solov2_light_r34", "data.img_scale=[1333,800]", "data.multiscale_short=[640,800]"], 1033),
])
def test_light_models_at_the_full_scale_are_warned(overrides, largest):
    notice = scale_range_notice(resolved(*overrides))
    assert notice is not None and notice.startswith("model.head.scale_ranges ends at 896 px")
    assert f"(up to {largest} here)" in notice


@pytest.mark.parametrize("overrides", [
    ["+experiment=solov2_light_r18_3x"],  # 768 with short sides 352-512: up to 627 px
    ["model=solov2_r50"],                  # ranges end at 2048
    ["+experiment=solov2_r101_3x"],
])
def test_recipes_are_not(overrides):
    assert scale_range_notice(resolved(*overrides)) is None
