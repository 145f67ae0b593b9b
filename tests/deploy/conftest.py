"""Deploy fixtures: the deploy config composed from conf/, and a tiny SOLOv2 fitted once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from deploy_support import CANVAS, FIT_ITERS, ROOT, base_overrides, compose_deploy_cfg  # noqa: F401
from omegaconf import DictConfig, OmegaConf
from torch import nn

from solo_npu.data import CocoInstanceDataset, Compose, FixedShapeCollate, Normalize
from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.preprocess import FitCanvasResize
from solo_npu.models import build_model


@pytest.fixture(scope="session")
def deploy_cfg(synthetic_coco: Path) -> Callable[..., DictConfig]:
    """``deploy_cfg(*overrides)``: the composed deploy config for the tiny model on the synthetic data."""
    return lambda *overrides: compose_deploy_cfg([*base_overrides(synthetic_coco), *overrides])


@pytest.fixture(scope="session")
def canvas() -> tuple[int, int]:
    return CANVAS


@pytest.fixture(scope="session")
def fitted_tiny(synthetic_coco: Path) -> nn.Module:
    """solov2_tiny fitted on the synthetic val images at the deploy canvas (about 10 s on 2 cores).

    The model over-fits the 8 images on purpose: the tests need non-trivial AP to compare backends.
    """
    torch.manual_seed(0)
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "solov2_tiny.yaml")
    cfg.num_classes = 3
    model = build_model(cfg)  # the yaml's deploy: block is not the builder's
    transforms = Compose([FitCanvasResize(CANVAS), Normalize()])
    dataset = CocoInstanceDataset(synthetic_coco / "annotations" / "instances_val2017.json",
                                  synthetic_coco / "val2017", transforms=transforms, train=True, max_instances=8)
    batch = FixedShapeCollate(8, "fixed", canvas=CANVAS, position="centre")([dataset[i] for i in range(len(dataset))])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run outside the function-scoped one_torch_thread
    try:
        for _ in range(FIT_ITERS):
            loss = sum(model(batch["images"], batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def make_ctx(synthetic_coco: Path, fitted_tiny: nn.Module,
             tmp_path_factory: pytest.TempPathFactory) -> Callable[..., DeployContext]:
    """``make_ctx(*overrides, run_dir=None)``: a DeployContext on the fitted tiny model and synthetic data."""

    def make(*overrides: str, run_dir: Path | None = None, model: nn.Module | None = fitted_tiny) -> DeployContext:
        cfg = compose_deploy_cfg([*base_overrides(synthetic_coco), *overrides])
        ctx = DeployContext(cfg, run_dir or tmp_path_factory.mktemp("run"), model_name="solov2_tiny")
        if model is not None:
            ctx.set_model(model)
        return ctx

    return make


@pytest.fixture
def providers(monkeypatch):
    """Set what ``onnxruntime.get_available_providers()`` reports (onnxruntime-cann, -gpu or plain)."""
    import onnxruntime

    def use(*names):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [*names, "CPUExecutionProvider"])

    return use
