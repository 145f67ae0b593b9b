"""A resume of a run with another model: one line naming the model that wrote the file and the choice that
rebuilds it, and the run's config.yaml kept as it was (it records how the run trained)."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import run_train

from solo_npu.checkpoints import CheckpointError


def test_resume_with_another_model_is_one_line_and_keeps_the_config(smoke_data: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fast = [*smoke_data, "train.eval_interval=0", "train.eval_at_end=false", "train.plots=false"]
    run_train([*fast, "train.max_iters=2"], run_dir)
    config = (run_dir / "config.yaml").read_text()
    assert "name: solov2_tiny" in config
    # the run continued, but without its model= (the light R18 stands for the model a user forgot to name)
    with pytest.raises(CheckpointError) as info:
        run_train([*fast, "train.max_iters=4", "resume=auto", "model=solov2_light_r18", "model.pretrained=null"],
                  run_dir)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{run_dir / 'checkpoints' / 'last.pth'}: its weights do not fit this run's model (")
    assert line.endswith("): its training config built another model, add model=solov2_tiny"), line
    assert (run_dir / "config.yaml").read_text() == config
    # the same resume with the model that wrote it continues, and the config is the run's again
    assert run_train([*fast, "train.max_iters=4", "resume=auto"], run_dir)["iterations"] == 4
    assert "name: solov2_tiny" in (run_dir / "config.yaml").read_text()
