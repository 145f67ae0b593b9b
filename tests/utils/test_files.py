"""Result files are replaced atomically: a write that fails midway leaves the previous file as it was."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from failing_writes import DISK_FULL, fail_text_writes

from solo_npu.engine.job import write_summary
from solo_npu.utils.files import write_json_atomic, write_text_atomic

SUMMARY = {"mode": "train", "iterations": 12, "final_loss": 1.2345, "segm_ap": 0.125, "bbox_ap": None,
           "results": {"segm": {"AP": 0.125, "AP50": 0.5}, "bbox": {}}, "world_size": 1, "device": "cpu",
           "epoch_counts": [[0, 6], [1, 6]], "data_faults": {"train": {}, "val": {}}}


@pytest.mark.parametrize("error", [DISK_FULL, KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_failed_write_keeps_previous_summary_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch,
                                                                          error: BaseException) -> None:
    """The write of a new summary.json fails after 40 characters: the previous one is there byte for byte,
    and no temporary file is left."""
    write_summary(tmp_path, SUMMARY)
    before = (tmp_path / "summary.json").read_bytes()
    failures = fail_text_writes(monkeypatch, 40, error)
    with pytest.raises(type(error)):
        write_summary(tmp_path, {**SUMMARY, "iterations": 24, "final_loss": 0.5})
    monkeypatch.undo()
    assert failures == [error], "the failure was not injected"
    assert (tmp_path / "summary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_summary_bytes_and_mode_are_those_of_write_text(tmp_path: Path) -> None:
    """summary.json has the bytes ``Path.write_text(json.dumps(summary, indent=2) + "\\n")`` gave it, and the
    mode a new file gets (0o666 less the umask), not mkstemp's 0o600."""
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(SUMMARY, indent=2) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_summary(run_dir, SUMMARY)
    written = run_dir / "summary.json"
    assert written.read_bytes() == reference.read_bytes()
    assert written.stat().st_mode == reference.stat().st_mode
    write_summary(run_dir, {**SUMMARY, "iterations": 24})  # replacing it
    assert json.loads(written.read_text())["iterations"] == 24
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]


def test_write_json_atomic_passes_dumps_options(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"b": Path("x"), "a": 1}, end="\n", indent=1, sort_keys=True,
                             default=str)
    assert path.read_text() == '{\n "a": 1,\n "b": "x"\n}\n'
    assert write_text_atomic(tmp_path / "a.json", "é").read_bytes() == "é".encode()


def test_checkpoint_has_the_mode_of_torch_save_and_survives_a_failed_save(tmp_path: Path) -> None:
    """A checkpoint gets the mode ``torch.save(obj, path)`` gives a new file (0o666 less the umask: a group
    that shares a run directory can read it), not mkstemp's 0o600; a save that fails midway (an object
    torch.save cannot pickle, a generator, after the tensors before it are written) leaves the previous checkpoint."""
    import torch

    from solo_npu.checkpoints import load_checkpoint, save_checkpoint

    reference = tmp_path / "reference.pth"
    torch.save({"w": torch.ones(3)}, reference)
    path = save_checkpoint({"w": torch.arange(3.0)}, tmp_path / "last.pth")
    assert path.stat().st_mode == reference.stat().st_mode
    with pytest.raises(TypeError, match="pickle"):  # "cannot pickle 'generator' object"
        save_checkpoint({"w": torch.zeros(1000), "bad": (i for i in ())}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "reference.pth"]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        from solo_npu.utils.files import atomic_write

        with atomic_write(tmp_path / "x", "a"):
            pass


def test_atomic_write_through_a_symlink_replaces_the_file_it_names(tmp_path: Path) -> None:
    """As ``open(link, "w")`` does, the file the link names gets the new contents and the link stays a link."""
    target = tmp_path / "runs" / "summary.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "summary.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def _compile_script(path: Path) -> None:
    from solo_npu.deploy.compile_310p import write_compile_script

    write_compile_script(path, [["atc", f"--model={path.stem}.onnx", "--framework=5"]], [])


def _synthetic_annotations(path: Path) -> None:
    from solo_npu.data.synthetic import generate_synthetic_coco

    generate_synthetic_coco(path.parents[1], 2, 1, size=32, seed=len(path.parents[1].name))


@pytest.mark.parametrize("writer,relative", [(_compile_script, "compile/compile_310p.sh"),
                                             (_synthetic_annotations, "data/annotations/instances_train2017.json")],
                         ids=["atc-script", "synthetic-annotations"])
def test_failed_rewrite_keeps_previous_file(tmp_path: Path, monkeypatch, writer, relative: str) -> None:
    """The ATC compilation script and the synthetic annotations: a rewrite that fails after 30 characters
    (a full disk) leaves the previous file byte for byte, mode included, and no temporary file."""
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path)
    before, mode = path.read_bytes(), path.stat().st_mode
    failures = fail_text_writes(monkeypatch, 30, DISK_FULL, name=path.name)
    with pytest.raises(OSError, match="No space left"):
        writer(path)
    monkeypatch.undo()
    assert failures == [DISK_FULL], "the failure was not injected"
    assert path.read_bytes() == before and path.stat().st_mode == mode
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_path_replaces_only_a_complete_file(tmp_path: Path) -> None:
    """Writers that take a file name: the new file arrives whole (mode of a new file, the target's suffix on the
    temporary name so the writer picks the format), or the previous file stays and no temporary file is left."""
    from solo_npu.utils.files import atomic_path

    path = tmp_path / "loss.png"
    path.write_bytes(b"previous")
    reference = tmp_path / "reference.png"
    reference.write_bytes(b"x")
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".loss.png.")
        assert not tmp.exists()  # the writer makes it
        tmp.write_bytes(b"new image")
    assert path.read_bytes() == b"new image"
    assert path.stat().st_mode == reference.stat().st_mode

    def half_then_fail(target: Path) -> None:
        target.write_bytes(b"half an im")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"), atomic_path(path) as tmp:
        half_then_fail(tmp)
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(path):
        pass  # e.g. cv2.imwrite returning False without raising
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"cut")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"new image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "reference.png"]
