"""Shared test fixtures: a small synthetic COCO dataset generated once per session and its data config."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from synthetic_support import SYNTHETIC_SIZE, SYNTHETIC_TRAIN, SYNTHETIC_VAL, synthetic_data_cfg

from solo_npu.data.synthetic import generate_synthetic_coco


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models on 2 shared CI cores: a second intra-op thread only adds contention (OpenMP barriers
    waiting on a descheduled thread made steps 10x slower). Subprocess tests set their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a synthetic COCO dataset (16 train / 8 val images of about 128 px), shared by the session."""
    root = tmp_path_factory.mktemp("synthetic_coco")
    return generate_synthetic_coco(root, SYNTHETIC_TRAIN, SYNTHETIC_VAL, size=SYNTHETIC_SIZE, seed=0)


@pytest.fixture
def synthetic_cfg(synthetic_coco: Path) -> DictConfig:
    """The data config of the session's synthetic dataset."""
    return synthetic_data_cfg(synthetic_coco)


@pytest.fixture
def make_synthetic_cfg(synthetic_coco: Path):
    """``make_synthetic_cfg(**overrides)``: :func:`synthetic_data_cfg` for the session's dataset."""
    return lambda **overrides: synthetic_data_cfg(synthetic_coco, **overrides)


@pytest.fixture
def data_cfg_for():
    """``data_cfg_for(root, **overrides)``: :func:`synthetic_data_cfg` for a dataset a test generated itself."""
    return synthetic_data_cfg


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """End the ranks a test left running. A test that pytest-timeout interrupted in mp.spawn's join leaves
    its (non-daemonic) ranks alive, and multiprocessing joins those when pytest exits: a hung rank would
    hold the run after its summary. A test that ended normally has joined its ranks, so any still alive
    after its teardown are leftovers."""
    for child in multiprocessing.active_children():
        if not child.daemon:
            child.kill()
            child.join(10)


def pytest_configure(config: pytest.Config) -> None:
    # pycocotools' C extension predates numpy 2's copy keyword; the warning is not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")
