# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the main job on the embedded data
#   make test   same set-up, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's torch pair (a CUDA build that runs on CPU, from local disk).
# GPU machines: make TORCH_PINS="torch==2.11.* torchvision==0.26.*" test
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.rmkd-installed

.PHONY: install test demo clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so resolving the rest never pulls another torch
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	$(PY) -c "import torch, torchvision, rmkd; print('rmkd', rmkd.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/rmkd demo

clean-runs:
	rm -rf runs data/digits-quick data/cache/quick
