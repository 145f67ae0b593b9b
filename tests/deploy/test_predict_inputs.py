"""``task=predict`` on the image folders users have: one image that cannot be predicted is a counted WARNING skip
and the others' results are kept; a JPEG cut short is an unreadable image; a run that predicts no image fails in
one line; subfolders are not read (as mmdet's DetInferencer and detectron2's demo read a folder) and said once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from deploy_support import ROOT, compose_deploy_cfg
from omegaconf import OmegaConf

from solo_npu.deploy.pipeline import main
from solo_npu.deploy.predict import run_predict
from solo_npu.models import build_model


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(OmegaConf.load(ROOT / "conf" / "model" / "solov2_tiny.yaml"), num_classes=3)
    with torch.no_grad():
        model.mask_head.conv_cls.bias.fill_(-20.0)
        model.mask_head.conv_cls.bias[1] = 8.0  # every location scores class 1: instances on every image
    return model.eval()


def write(folder: Path, name: str, shape: tuple[int, int] = (96, 128)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), np.random.default_rng(len(name)).integers(0, 255, (*shape, 3), dtype=np.uint8))
    return folder / name


def data_cfg():
    data = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    data.img_scale = [160, 128]
    return data


def cli_cfg(tmp_path: Path, images: Path):
    return compose_deploy_cfg(["task=predict", "model=solov2_tiny", f"input={images}", f"output={tmp_path / 'out'}",
                               f"data.root={tmp_path / 'no_data'}", "data.generate=false", "runtime.device=cpu"])


def test_an_image_that_fails_is_a_counted_skip_and_the_others_are_kept(tmp_path, caplog):
    folder = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write(folder, name)
    write(folder, "line.png", (1, 3000))  # its short side rounded to 0 in the resize: a cv2 traceback ended the run
    whole = write(folder, "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # cv2 reads it half grey, libjpeg warns on stderr
    model = tiny_model()
    predict = model.predict

    def failing(images, metas):
        if metas[0]["file_name"] == "b.png":
            raise RuntimeError("device lost")
        return predict(images, metas)

    model.predict = failing
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(model, folder, tmp_path / "out", None, data_cfg(), "cpu", 0.3)
    assert out["images"] == 3 and out["skipped"] == 2
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {e["file_name"] for e in entries} == {"a.png", "c.png", "line.png"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("b.png" in w and "RuntimeError: device lost" in w for w in warnings)
    assert any("cut.jpg" in w and "unreadable" in w for w in warnings)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "c.png", "line.png"]


def test_no_image_predicted_is_a_one_line_error(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"not an image at all")
    whole = write(bad, "cut.jpg").read_bytes()
    (bad / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    for images, count in ((notes, 1), (bad, 2)):
        assert main(cli_cfg(tmp_path, images)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"error: no image of {images} could be predicted ({count} skipped, see the WARNINGs above)"
        assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == []


def test_subfolders_are_not_read_and_said_once(tmp_path, caplog, capsys):
    folder = tmp_path / "in"
    write(folder, "top.png")
    write(folder / "sub", "nested.png")
    write(folder / "other", "deeper.png")
    with caplog.at_level(logging.WARNING, logger="solo_npu.deploy.predict"):
        out = run_predict(tiny_model(), folder, tmp_path / "out", None, data_cfg(), "cpu", 0.3)
    assert out["images"] == 1
    said = [r.getMessage() for r in caplog.records if "subfolder" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"2 subfolders of {folder} are not read")
    only_sub = tmp_path / "only_sub"
    write(only_sub / "sub", "nested.png")
    assert main(cli_cfg(tmp_path, only_sub)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no images (")
    assert err[-1].endswith(f"in {only_sub} (its 1 subfolder is not read)")


def test_overlay_names_never_collide(tmp_path):
    """x.JPG and x.jpg both became x_jpg.png, and x.jpg, x.png and x_jpg.png two x_jpg.png: one overlay replaced
    another. Names also differ ignoring case, for the file systems that ignore it."""
    from solo_npu.deploy.predict import list_images, overlay_paths

    def names(files: list[str]) -> list[str]:
        return [p.name for p in overlay_paths([tmp_path / f for f in files], tmp_path / "out")]

    assert names(["x.JPG", "x.jpg"]) == ["x_JPG.png", "x_jpg_2.png"]
    assert names(["x.jpg", "x.png", "x_jpg.png"]) == ["x_jpg.png", "x_png.png", "x_jpg_2.png"]
    assert names(["X.png", "x.jpg", "y.png"]) == ["X_png.png", "x_jpg.png", "y.png"]
    folder = tmp_path / "in"
    for name in ("x.JPG", "x.jpg", "x.png", "x_jpg.png"):
        write(folder, name)
    out = run_predict(tiny_model(), folder, tmp_path / "out", None, data_cfg(), "cpu", 0.3)
    assert out["images"] == 4 and len(list((tmp_path / "out").glob("*.png"))) == 4
    # which image each overlay shows: nothing recorded it, and x_jpg_2.png could be x.jpg or x_jpg.png
    shown = {e["overlay"]: e["file_name"] for e in json.loads((tmp_path / "out" / "overlays.json").read_text())}
    files = list_images(folder)
    assert shown == {p.name: f.name for p, f in zip(overlay_paths(files, tmp_path / "out"), files, strict=True)}
    assert shown["x_jpg_3.png"] == "x_jpg.png" and len(set(shown.values())) == 4


def test_small_overlays_are_enlarged_as_the_training_report_images(tmp_path):
    image = write(tmp_path / "in", "small.png", (96, 128))
    run_predict(tiny_model(), image, tmp_path / "out", ["a", "b", "c"], data_cfg(), "cpu", 0.3)
    overlay = cv2.imread(str(tmp_path / "out" / "small.png"))
    assert overlay.shape == (96 * 6, 128 * 6, 3)  # 96 -> 576 (at least 512): factor 6
