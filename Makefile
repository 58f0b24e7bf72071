# One-command set-up for the course. Every target creates .venv on first use.
#   make test      install everything, then run the whole test suite (notebooks included, fast mode)
#   make lint      install everything, then check the style of the code and notebooks with ruff
#   make lab       install everything, then open JupyterLab at notebooks/
#   make pretrain  install everything, then pretrain the course model from the command line
#   make browser   install Chromium (Debian's package) for the browser tests in tests/e2e (needs root or sudo)
#   make e2e       install everything and Chromium, then run only the browser tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# On a machine with an NVIDIA driver, install PyTorch's normal (CUDA) build; otherwise the CPU build.
# On this course's reference machines `torch==2.13.0` resolves to a local CPU wheel. Elsewhere, point
# TORCH_INDEX at PyTorch's CPU index (https://download.pytorch.org/whl/cpu) to avoid gigabytes of CUDA.
HAS_CUDA    := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC  ?= $(if $(HAS_CUDA),torch>=2.4,torch==2.13.0)
TORCH_INDEX ?=
PYTEST_ARGS ?=
PRETRAIN_ARGS ?=

.PHONY: setup test lint lab pretrain browser e2e readme-screenshot clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Two pytest workers on two cores: one thread each, or PyTorch's threads fight and everything slows down.
test: setup
	MINIMIND_EDU_FAST=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --nbval-lax $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# As root (a container, a cloud VM) JupyterLab refuses to start unless told --allow-root.
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

pretrain: setup
	$(VENV)/bin/minimind-edu pretrain $(PRETRAIN_ARGS)

# Chromium for tests/e2e (Playwright drives it; it never downloads a browser of its own), and a CJK font so that
# the screenshots show Chinese text, not boxes. Without apt and root or sudo, this says so and the browser tests
# are skipped with that reason.
BROWSER_PACKAGES := chromium fonts-wqy-microhei
SUDO := $(if $(filter 0,$(shell id -u)),,$(shell command -v sudo >/dev/null 2>&1 && echo sudo -n))
browser:
	@if command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q .; then \
		echo "make browser: Chromium and a CJK font are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || [ -n "$(SUDO)" ]; }; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
			--no-install-recommends $(BROWSER_PACKAGES) \
		|| echo "make browser: installing $(BROWSER_PACKAGES) failed; the browser tests (tests/e2e) will be skipped"; \
	else \
		echo "make browser: cannot install $(BROWSER_PACKAGES) here (needs apt-get and root or sudo). Install" \
		     "Chromium yourself or set MINIMIND_EDU_CHROMIUM=/path/to/chromium, else tests/e2e is skipped"; \
	fi

e2e: setup browser
	MINIMIND_EDU_FAST=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests/e2e -v $(PYTEST_ARGS)

# Refresh the READMEs' JupyterLab screenshots (English and Chinese) from the browser tests' artifacts.
readme-screenshot: setup browser
	MINIMIND_EDU_FAST=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests/e2e -k memory_explorer -q
	cp test-artifacts/e2e/04_memory-explorer-jupyterlab.png docs/images/memory_explorer_jupyterlab.png
	cp test-artifacts/e2e/04_memory-explorer-jupyterlab-zh.png docs/images/memory_explorer_jupyterlab_zh.png

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
