"""The deploy.py overrides that build a training run's model and read its data: ``++model.*`` for every model
setting of the run's config.yaml, its synthetic data's settings and the landscape input of its training scale.
One per line, for ``mapfile``: ``python scripts/deploy_overrides.py RUN_DIR/config.yaml`` (scripts/demo.sh,
benchmarks/ort_spinning.sh)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import yaml


def flat(node: dict[str, Any], prefix: str) -> Iterator[str]:
    for key, value in node.items():
        if key in ("_target_", "num_classes", "deploy"):
            continue
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"++model.{prefix}{key}={json.dumps(value, separators=(',', ':'))}"


def overrides(cfg: dict[str, Any]) -> list[str]:
    lines = list(flat(cfg["model"], ""))
    lines.append(f"++data.root={cfg['data']['root']}")
    for key in ("img_scale", "size", "num_train", "num_val", "shape_scale", "max_shapes"):
        if key in cfg["data"]:
            lines.append(f"++data.{key}={json.dumps(cfg['data'][key], separators=(',', ':'))}")
    long_side, short_side = cfg["data"]["img_scale"]
    lines.append(f"deploy.input_shape=[{short_side},{long_side}]")  # landscape canvas [H, W] of the training scale
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print("\n".join(overrides(yaml.safe_load(f))))
