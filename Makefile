# solo-npu developer commands. Override TORCH_SPEC to pick the torch build you need, e.g.
#   make install TORCH_SPEC='torch==2.1.0 "numpy<2"'   (the torch your torch_npu wheel matches; torch 2.1 needs numpy 1.x;
#   with torch-npu on x86_64 its CPU build: 'torch==2.1.0+cpu ... --extra-index-url https://download.pytorch.org/whl/cpu')
#   make install TORCH_SPEC='torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu'   (CPU-only build;
#   PyPI's Linux x86_64 torch, the default, is the CUDA build), 'torch==2.13.0+cuXYZ --extra-index-url
#   https://download.pytorch.org/whl/cuXYZ' for another CUDA release.
# Index options go with --extra-index-url: TORCH_SPEC reaches the package install too (below), and --index-url
# replaces PyPI there ("Base URL of the Python Package Index"; --extra-index-url: "Extra URLs of package indexes
# to use in addition to --index-url", pypa/pip src/pip/_internal/cli/cmdoptions.py), so hydra-core, pycocotools
# and the rest would not be found. The +cpu / +cuXYZ pin keeps pip from taking PyPI's torch instead.
#
# Supported torch: 2.1.0 to 2.13.0, the releases the lanes run (pyproject: torch>=2.1; newer ones are not run). The floor is the oldest torch that torch_npu
# still ships and maintains: torch 2.1.0 <-> torch-npu 2.1.0.post17 (CANN 8.3.RC1), see docker/README.md.
# `make test` runs the suite on the pinned torch below; `make test-floor` runs it again on the floor, `make test-lts`
# on torch 2.7.1, `make test-torch TORCH_VERSION=2.6.0` on torch 2.6.0.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
TESTS ?= tests
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# Floor lane: its own venv with the oldest supported torch from PyPI (there the x86_64 wheel of 2.1.0 is
# the CUDA 12.1 build, about 2.5 GB with its nvidia-* wheels; it runs on the CPU) and a numpy it was built
# against. It runs the whole suite. Tests that need a newer torch feature skip themselves by feature
# detection and say so (pytest -rs lists them). The two-rank tests once hung here now and then in gloo's
# destroy_process_group while forked DataLoader workers were still alive; the engine (and those tests) now
# end the workers first (solo_npu.data.stop_workers). Any test that still hangs fails after 600 s with its
# traceback (pytest-timeout, pyproject's timeout = 600; tests/conftest.py then ends the ranks it left
# running), and the run goes on.
# The floor lane also runs on the oldest supported Python (pyproject's requires-python, 3.10) when a python3.10
# is installed, and says which Python it ran on; a venv of another Python is made again.
FLOOR_TORCH_VERSION := 2.1.0
FLOOR_PYTHON_VERSION := 3.10
ifndef FLOOR_PYTHON  # python3.10 on PATH that runs (a pyenv shim may not), else pyenv's 3.10, else $(PYTHON)
FLOOR_PYTHON := $(or $(shell for p in python$(FLOOR_PYTHON_VERSION) \
	$$HOME/.pyenv/versions/$(FLOOR_PYTHON_VERSION).*/bin/python$(FLOOR_PYTHON_VERSION); do \
	"$$p" -c "" >/dev/null 2>&1 && { command -v "$$p"; break; }; done),$(PYTHON))
endif
FLOOR_VENV ?= .venv-floor
FLOOR_TORCH_SPEC ?= torch==$(FLOOR_TORCH_VERSION) "numpy<2"
FLOOR_TESTS ?= tests
# Long-term lane: torch 2.7.1, the torch of torch_npu's long-term 2.7.1 line (torch-npu 2.7.1.post4, CANN 9.0.0,
# see docker/README.md), from PyPI (the CUDA 12.6 build; it runs on the CPU), on $(PYTHON). The whole suite again,
# so that a torch between the floor and the pinned one is run, not assumed.
LTS_TORCH_VERSION := 2.7.1
LTS_VENV ?= .venv-lts
# Any other torch from PyPI, the whole suite in its own venv: `make test-torch TORCH_VERSION=2.6.0` (CI runs 2.6.0,
# torch_npu's regular 2.6.0 line and the floor once 2.1.0 leaves maintenance on 2026-12-30) in .venv-torch-2.6.0.
TORCH_VERSION ?=
TORCH_VENV ?= .venv-torch-$(TORCH_VERSION)
PY_MINOR := import sys; print("%d.%d" % sys.version_info[:2])

# Wheels for the lent GPU machine that benchmarks/gpu_suite.sh runs on (docs/benchmarks.md, "GPU suite"): Python 3.12
# with torch, onnx, onnxruntime, numpy, PyYAML, packaging, sympy, colorama and ml-dtypes but without a package index.
# These are the packages it lacks, at the versions the main venv holds; every other requirement of theirs is there.
# Pure-Python and cp312 manylinux x86_64 wheels come from the index; antlr4-python3-runtime 4.9.3 (omegaconf's and
# hydra-core's ==4.9.* pin) has an sdist only, built here into a pure-Python wheel. The folder is git-ignored, so a
# device call names it in carry; the suite installs it with pip install --no-index --find-links .whl.
GPU_WHEELS_DIR ?= .whl
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11 onnxslim==0.1.98
GPU_WHEELS_SDIST := antlr4-python3-runtime==4.9.3

.PHONY: FORCE install demo test test-floor test-lts test-torch lint clean gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)

# TORCH_SPEC is repeated with the package so that resolving its dependencies cannot move torch or numpy.
# The stamp holds the TORCH_SPEC and EXTRAS it installed: a TORCH_SPEC or EXTRAS given on the command line or in the
# environment that differs from them installs again (`make install TORCH_SPEC=... EXTRAS=dev,npu` on an existing
# venv); a later plain `make test` keeps what is installed.
INSTALL_SPEC := $(strip $(TORCH_SPEC) [$(EXTRAS)])
ifneq ($(filter command line environment,$(origin TORCH_SPEC) $(origin EXTRAS)),)
ifneq ($(strip $(shell cat $(VENV)/.installed 2>/dev/null)),$(INSTALL_SPEC))
REINSTALL := FORCE
endif
endif
$(VENV)/.installed: pyproject.toml Makefile $(REINSTALL) | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[$(EXTRAS)]" $(TORCH_SPEC)
	printf '%s\n' '$(INSTALL_SPEC)' > $@

FORCE:

install: $(VENV)/.installed

# Main job on the embedded synthetic dataset: generate data, train the light SOLOv2, evaluate,
# then export and deploy the trained checkpoint with a report.
demo: install
	bash scripts/demo.sh

# The suite runs in PYTEST_WORKERS processes (pytest-xdist; 0: in this one). In-process tests use one torch thread
# (tests/conftest.py) and many tests wait on subprocesses, so one process keeps 2 cores about half busy: two
# workers ran the main suite in 5.7 minutes against 10.5 (0c40e7a, AMD EPYC, 2 cores).
PYTEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) $(TESTS)

test-floor:
	@want=$$($(FLOOR_PYTHON) -c '$(PY_MINOR)'); \
	if [ -x $(FLOOR_VENV)/bin/python ] && [ "$$($(FLOOR_VENV)/bin/python -c '$(PY_MINOR)')" != "$$want" ]; then \
		echo "$(FLOOR_VENV) is not Python $$want: making it again"; rm -rf $(FLOOR_VENV); fi; \
	if [ "$$want" != "$(FLOOR_PYTHON_VERSION)" ]; then \
		echo "WARNING: python$(FLOOR_PYTHON_VERSION) not found; the floor lane runs on Python $$want"; fi
	$(MAKE) install VENV=$(FLOOR_VENV) PYTHON=$(FLOOR_PYTHON) TORCH_SPEC='$(FLOOR_TORCH_SPEC)'
	$(FLOOR_VENV)/bin/python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
		assert v == '$(FLOOR_TORCH_VERSION)', f'$(FLOOR_VENV) holds torch {v}, not $(FLOOR_TORCH_VERSION)'; \
		print(f'floor lane: Python {sys.version.split()[0]}, torch {torch.__version__}')"
	$(MAKE) test VENV=$(FLOOR_VENV) TORCH_SPEC='$(FLOOR_TORCH_SPEC)' TESTS='-rs $(FLOOR_TESTS)'

test-lts:
	$(MAKE) test-torch TORCH_VERSION=$(LTS_TORCH_VERSION) TORCH_VENV=$(LTS_VENV)

test-torch:
	@[ -n "$(TORCH_VERSION)" ] || { echo "make test-torch needs TORCH_VERSION=X.Y.Z (a torch release on PyPI)"; exit 2; }
	$(MAKE) install VENV=$(TORCH_VENV) TORCH_SPEC='torch==$(TORCH_VERSION)'
	$(TORCH_VENV)/bin/python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
		assert v == '$(TORCH_VERSION)', f'$(TORCH_VENV) holds torch {v}, not $(TORCH_VERSION)'; \
		print(f'torch lane: Python {sys.version.split()[0]}, torch {torch.__version__}')"
	$(MAKE) test VENV=$(TORCH_VENV) TORCH_SPEC='torch==$(TORCH_VERSION)' TESTS='-rs tests'

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs output data/synthetic .pytest_cache

# One version of each package (two would stop the install there), so the folder is made afresh.
gpu-wheels:
	rm -rf $(GPU_WHEELS_DIR)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(GPU_WHEELS_DIR) $(GPU_WHEELS_SDIST)
	@ls -l $(GPU_WHEELS_DIR); du -sh $(GPU_WHEELS_DIR)
