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
    assert "of other shapes, e.g. backbone.conv1.weight: file (16, 3, 7, 7), model (64, 3, 7, 7)" in line
    assert len(line) < 700, len(line)  # counts and a few names, not torch's list of every key
    assert line.endswith("): its training config built another model, add model=solov2_tiny"), line
    assert (run_dir / "config.yaml").read_text() == config
    # the same resume with the model that wrote it continues, and the config is the run's again
    assert run_train([*fast, "train.max_iters=4", "resume=auto"], run_dir)["iterations"] == 4
    assert "name: solov2_tiny" in (run_dir / "config.yaml").read_text()


def test_resume_auto_without_run_dir_says_there_is_nothing_to_resume(smoke_data: list[str], tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Without run_dir each run gets a new timestamped directory, so resume=auto can find nothing there: a WARNING
    (it was an INFO line that it starts from scratch); with run_dir, nothing is said before the run looks."""
    from engine_support import compose_train_cfg
    from omegaconf import OmegaConf

    from solo_npu.engine.job import check_start

    for given, warned in ((None, True), (str(tmp_path / "run"), False)):
        cfg = compose_train_cfg(["+experiment=smoke", *smoke_data, "resume=auto",
                                 *([f"run_dir={given}"] if given else [])])
        caplog.clear()
        with caplog.at_level("WARNING", logger="solo_npu.engine.job"):
            check_start(OmegaConf.to_container(cfg, resolve=True), tmp_path / "new")
        said = [r.getMessage() for r in caplog.records if "resume=auto without run_dir" in r.getMessage()]
        assert bool(said) == warned, caplog.text


def test_resume_of_a_folder_names_the_file_inside(tmp_path: Path) -> None:
    from solo_npu.engine.checkpointer import find_resume_file

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pth").write_bytes(b"x")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "last.pth").write_bytes(b"x")
    cases = {tmp_path / "run": f"resume={tmp_path / 'run' / 'checkpoints' / 'last.pth'}, or resume=auto "
                               f"run_dir={tmp_path / 'run'}",
             tmp_path / "run" / "checkpoints": f"resume={tmp_path / 'run' / 'checkpoints' / 'last.pth'}, or "
                                               f"resume=auto run_dir={tmp_path / 'run'}",
             # a folder that is no run's checkpoints/: its last.pth, and no run_dir that resume=auto would not read
             tmp_path / "loose": f"resume={tmp_path / 'loose' / 'last.pth'}"}
    for folder, hint in cases.items():
        with pytest.raises(CheckpointError) as info:
            find_resume_file(str(folder), tmp_path / "new")
        assert str(info.value) == f"resume={folder} is a directory, not a checkpoint file: {hint}"
