# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the main job on the embedded data
#   make test   same set-up, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's torch pair (a CUDA build that runs on CPU, from local disk).
# GPU machines: make TORCH_PINS="torch==2.11.* torchvision==0.26.*" test
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.rmkd-installed

.PHONY: install test demo clean-runs browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so resolving the rest never pulls another torch
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	$(PY) -c "import torch, torchvision, rmkd; print('rmkd', rmkd.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

# tests/test_browser.py drives Debian's chromium (/usr/bin/chromium) with playwright; without it
# that test is skipped. Installed here when missing and possible (root with apt-get).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium) \
		|| echo "note: installing chromium failed, tests/test_browser.py will be skipped"; \
	else echo "note: chromium not found, tests/test_browser.py will be skipped; install it with: sudo apt-get install chromium"; fi

test: $(STAMP) browser
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/rmkd demo

clean-runs:
	rm -rf runs data/digits-quick data/cache/quick
