"""What the benchmark scripts' reports say: the device measured (its name in every row of a CUDA table, a heading of
its own), the settings that move CUDA timings (TF32, cudnn.benchmark) and the command that really ran."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def test_sections_go_where_SOLO_BENCHMARKS_MD_says(tmp_path: Path) -> None:
    target = tmp_path / "benchmarks.md"
    code = "import common; print(common.BENCHMARKS_MD)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCHMARKS, capture_output=True, text=True,
                          env={**os.environ, "SOLO_BENCHMARKS_MD": str(target)}, check=True)
    assert proc.stdout.strip() == str(target)


@pytest.fixture(autouse=True)
def _autoload_setting_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark modules setdefault TORCH_DEVICE_BACKEND_AUTOLOAD at import; the test's value is put back."""
    monkeypatch.setenv("TORCH_DEVICE_BACKEND_AUTOLOAD", os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD", "0"))


@pytest.fixture
def train_throughput(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_throughput

    monkeypatch.setattr(train_throughput, "describe_machine", lambda: "a machine")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return train_throughput


def _row(amp: bool, device: str = "cuda", name: str = "NVIDIA H200") -> dict:
    settings = ("torch.backends.cudnn.benchmark=False, torch.backends.cudnn.allow_tf32=True, "
                "torch.backends.cuda.matmul.allow_tf32=False") if device == "cuda" else ""
    return {"case": "r50", "amp": amp, "device": device, "device_name": name, "batch": 2, "step_s": 0.25,
            "images_per_s": 8.0, "peak_mb": 9000.0, "loss": 3.0,
            "fp32": "fp32 (TF32 convolutions)" if device == "cuda" else "fp32", "settings": settings}


def test_training_throughput_names_the_device_and_what_ran(train_throughput) -> None:
    argv = ["--cases", "r50", "--batch", "2", "--warmup", "3", "--steps", "8", "--device", "cuda"]
    args = Namespace(steps=8, warmup=3, threads=0)
    heading, text = train_throughput.throughput_section([_row(False), _row(True)], 2, args, argv)
    assert heading == "## Training throughput (cuda)"  # a CUDA run no longer replaces the CPU table
    assert text.startswith(heading + "\n")
    assert "`python benchmarks/train_throughput.py --cases r50 --batch 2 --warmup 3 --steps 8 --device cuda`" in text
    assert "device cuda (NVIDIA H200) (torch.backends.cudnn.benchmark=False" in text
    assert "| R50-FPN | 800x1333 (padded 800x1344) | NVIDIA H200 | 2 | fp32 (TF32 convolutions) | 0.25 |" in text
    assert "| NVIDIA H200 | 2 | AMP |" in text
    assert "Only" not in text
    _, partial = train_throughput.throughput_section([_row(False)], 2, args, argv)
    assert "Only 1 of the 2 cases were measured" in partial
    cpu_heading, cpu_text = train_throughput.throughput_section([_row(False, "cpu", "cpu")], 1, args, argv)
    assert cpu_heading == "## Training throughput"
    assert "| 800x1333 (padded 800x1344) | cpu | 2 | fp32 |" in cpu_text
    assert "OMP_NUM_THREADS" not in cpu_text  # the script never sets it


def test_fp32_on_cuda_says_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import common

    cuda, cpu = Namespace(type="cuda"), Namespace(type="cpu")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # torch's defaults
        assert common.fp32_label(cuda) == "fp32 (TF32 convolutions)"
        assert "torch.backends.cudnn.allow_tf32=True" in common.cuda_settings(cuda)
        torch.backends.cudnn.allow_tf32 = False
        assert common.fp32_label(cuda) == "fp32 (no TF32)"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert common.fp32_label(cpu) == "fp32"
    assert common.cuda_settings(cpu) == ""


def test_forward_benchmark_times_autocast_rows(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import inference_mode

    monkeypatch.setattr(inference_mode, "describe_machine", lambda: "a machine")
    argv = ["--model", "solov2_tiny", "--shape", "64", "64", "--iters", "1", "--device", "cpu", "--precision", "fp32",
            "fp16", "bf16", "--no-write"]
    inference_mode.main(argv)
    out = capsys.readouterr().out
    assert "fp16 autocast is not timed on the CPU" in out
    assert f"Command: `python benchmarks/inference_mode.py {' '.join(argv)}`" in out
    rows = [line.split(" | ")[:2] for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    layouts = ["| training layout (today's eager)", "| BN folded", "| BN folded + channels-last (1x1 on oneDNN)"]
    assert rows == [[name, precision] for precision in ("fp32", "bf16 autocast") for name in layouts]
    # Each row's rate is the forward's multiply-accumulates x 2 over its time, counted here independently of the
    # benchmark: 3x3/1x1 convolutions and linears of the tiny model, from their weights and output sizes.
    from omegaconf import OmegaConf

    from solo_npu.models import build_model
    cfg = OmegaConf.load(BENCHMARKS.parent / "conf" / "model" / "solov2_tiny.yaml")
    cfg.num_classes, cfg.pretrained = 80, None
    model = build_model(cfg).eval()
    macs = 0

    def hook(mod, inputs, output):
        nonlocal macs
        macs += output.numel() * mod.weight[0].numel()

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.forward_head(torch.zeros(1, 3, 64, 64))
    assert f"Rate: the forward's {macs / 1e9:.4g} GMACs" in out
    for line in out.splitlines():
        if line.startswith("| ") and "---" not in line and "precision" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            ms, gflops = float(cells[2]), float(cells[4])
            assert gflops == pytest.approx(2 * macs / ms / 1e6, rel=0.06 / ms + 0.01)  # ms is printed to 0.1
    assert "GFLOP/s; the whole forward at that rate would take" in out
    assert "In the fp32 BN folded + channels-last row, convolution kernels took" in out
