"""The Dockerfiles cannot be built here (no Docker engine), so check what can be read: every path they
COPY exists in the repository, and the NPU run lines mount what the Ascend driver needs."""

import re
import shlex
from pathlib import Path

import pytest
from packaging.version import Version

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


def _one(pattern: str, text: str, where: str) -> str:
    found = set(re.findall(pattern, text, re.M))
    assert len(found) == 1, f"{where}: expected one value for {pattern!r}, found {sorted(found)}"
    return found.pop()


def test_torch_floor_is_the_same_everywhere():
    """pyproject, Makefile, README, Dockerfile.npu and docker/README.md name one floor, paired with one
    torch-npu release whose version carries that torch (torch_npu wheels are named {torch}[.postN])."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    dockerfile = (ROOT / "docker/Dockerfile.npu").read_text()
    docker_readme = (ROOT / "docker/README.md").read_text()

    floor = _one(r"^FLOOR_TORCH_VERSION :?= *(\S+)$", makefile, "Makefile")
    assert re.fullmatch(r"\d+\.\d+\.\d+", floor)
    assert Version(_one(r'"torch>=([\d.]+)"', pyproject, "pyproject.toml")) == Version(floor)  # 2.1 == 2.1.0
    assert _one(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, "Dockerfile.npu") == floor

    npu = _one(r"^ARG TORCH_NPU_VERSION=(\S+)$", dockerfile, "Dockerfile.npu")
    assert re.fullmatch(re.escape(floor) + r"(\.post\d+)?", npu), (floor, npu)
    row = _one(r"^\| *([\d.]+) \(floor\) *\| *(\S+) *\| *([\w.]+) *\|", docker_readme, "docker/README.md")
    assert row[:2] == (floor, npu), row
    cann = row[2].lower()
    assert _one(r"^ARG BASE_IMAGE=ascendai/cann:([\w.]+)-", dockerfile, "Dockerfile.npu") == cann

    assert f"torch {floor} with torch-npu {npu}" in readme.replace("\n  ", " ")
    assert f"Supported torch: {floor}" in readme
    assert f"torch=={floor}" in readme and f"torch-npu=={npu}" in readme
    # the floor lane is part of CI
    assert "make test-floor" in (ROOT / ".ci/run").read_text()


def test_python_floor_is_the_one_the_floor_lane_runs():
    """pyproject's requires-python, the Makefile's floor lane Python, ruff's target and the README name one
    oldest Python."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    oldest = _one(r'^requires-python = ">=([\d.]+)"$', pyproject, "pyproject.toml")
    assert _one(r"^FLOOR_PYTHON_VERSION :?= *(\S+)$", makefile, "Makefile") == oldest
    assert _one(r'^target-version = "py(\d+)"$', pyproject, "pyproject.toml") == oldest.replace(".", "")
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    assert f"need only Python ({oldest} or " in readme
    assert f"with Python {oldest}, the oldest supported Python" in readme


def test_long_term_lane_runs_the_long_term_torch():
    """The Makefile's long-term lane runs the torch of docker/README.md's long-term torch_npu row, and CI runs it:
    the README's claim that torch between the floor and the pinned one works is tested on that torch."""
    makefile = (ROOT / "Makefile").read_text()
    lts = _one(r"^LTS_TORCH_VERSION :?= *(\S+)$", makefile, "Makefile")
    rows = re.findall(r"^\| *([\d.]+) *\| *(\S+) *\| *([\w.]+) *\|[^|]*\| *long-term, maintained",
                      (ROOT / "docker/README.md").read_text(), re.M)
    assert [r[0] for r in rows] == [lts], rows
    assert "make test-lts" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    assert f"on {lts} (`make test-lts`" in readme


def test_every_maintained_torch_row_has_a_ci_lane():
    """Each torch of docker/README.md's supported table runs the suite in CI: the floor (`make test-floor`), the
    long-term row (`make test-lts`) and every other row (`make test-torch TORCH_VERSION=...` in .ci/run); the
    README names each."""
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci/run").read_text()
    table = (ROOT / "docker/README.md").read_text()
    rows = re.findall(r"^\| *([\d.]+)(?: \(floor\))? *\| *[\d.]+(?:\.post\d+)? *\|", table, re.M)
    assert len(rows) >= 3, rows
    lanes = {_one(r"^FLOOR_TORCH_VERSION :?= *(\S+)$", makefile, "Makefile"): "make test-floor",
             _one(r"^LTS_TORCH_VERSION :?= *(\S+)$", makefile, "Makefile"): "make test-lts"}
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    for torch_version in rows:
        lane = lanes.get(torch_version, f"make test-torch TORCH_VERSION={torch_version}")
        assert re.search(rf"^{re.escape(lane)}$", ci, re.M), (torch_version, lane)
        assert f"`{lane}`" in readme, (torch_version, lane)


def test_ci_runs_the_demo_and_holds_it_to_the_readme():
    """CI runs the README's first command (`make demo`) right after `make test` and fails it below a segm AP floor
    (DEMO_MIN_SEGM_AP in .ci/run) that every README demo figure reaches: the recipe's target, 0.5, which the README
    names, well below figures that differ by machine."""
    ci = (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("```bash\nmake demo ")
    commands = [line for line in ci.splitlines() if line.startswith("make ")]
    assert commands[:2] == ["make test", "make demo"], commands
    floor = float(_one(r"DEMO_MIN_SEGM_AP:-([\d.]+)", ci, ".ci/run"))
    claim = re.search(r"demo trains and evaluates .*?\(segm AP ([\d.]+)-([\d.]+) .*?, ([\d.]+) for the default "
                      r"seed .*?; its deploy report, .*? reads ([\d.]+)\)", readme.replace("\n", " "))
    assert claim, "README: the demo's segm AP figures"
    lowest = min(float(x) for x in claim.groups())
    assert floor == 0.5 < lowest, (floor, lowest)
    assert "fails when its segm AP is below 0.5" in readme.replace("\n", " ")
