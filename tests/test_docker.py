"""The Dockerfiles cannot be built here (no Docker engine), so check what can be read: every path they
COPY exists in the repository, and the NPU run lines mount what the Ascend driver needs."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.npu"]


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        line = line.strip()
        if line.upper().startswith("COPY "):
            parts = [p for p in shlex.split(line[5:]) if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists(name):
    sources = copy_sources(ROOT / name)
    assert len(sources) >= 5
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert missing == [], f"{name} copies paths that do not exist: {missing}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_package(name):
    text = (ROOT / name).read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert 'pip install -e ".[' in text


def test_npu_image_and_run_lines_mount_the_driver():
    text = (ROOT / "docker/Dockerfile.npu").read_text()
    assert "ascendai/" in text and "[npu" in text
    readme = (ROOT / "docker/README.md").read_text()
    for needed in [
        "/dev/davinci0",
        "/dev/davinci_manager",
        "/dev/devmm_svm",
        "/dev/hisi_hdc",
        "/usr/local/Ascend/driver/lib64",
        "/usr/local/bin/npu-smi",
        "/usr/local/dcmi",
        "/etc/ascend_install.info",
    ]:
        assert needed in readme, needed
