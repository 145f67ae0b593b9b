# solo-npu developer commands. Override TORCH_SPEC to pick the torch build you need, e.g.
#   make install TORCH_SPEC="torch==2.1.0"          (the one your torch_npu wheel matches)
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu121"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Main job on the embedded synthetic dataset: generate data, train the light SOLOv2, evaluate,
# then export and deploy the trained checkpoint with a report.
demo: install
	bash scripts/demo.sh

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs output data/synthetic .pytest_cache
