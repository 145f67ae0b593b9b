"""The run's plots: written whole or not at all; a failure is a WARNING, not the end of a finished run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from solo_npu.engine.report import save_plots


def _metrics(run_dir: Path) -> None:
    rows = ["iteration,name,value"] + [f"{i},train/loss,{2.0 - 0.1 * i}" for i in range(1, 6)]
    rows += ["5,val/segm_AP,0.25"]
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_plots_and_a_full_disk_while_drawing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    _metrics(tmp_path)
    assert [p.name for p in save_plots(tmp_path)] == ["loss.png", "ap.png"]
    before = {name: (tmp_path / name).read_bytes() for name in ("loss.png", "ap.png")}
    assert all(data.startswith(b"\x89PNG") for data in before.values())

    def half_then_fail(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with caplog.at_level(logging.WARNING, logger="solo_npu.engine.report"):
        assert save_plots(tmp_path) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("not written: [Errno 28] No space left on device" in w for w in warnings)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ap.png", "loss.png", "metrics.csv"]
