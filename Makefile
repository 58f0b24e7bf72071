# One-command set-up for the course. Every target creates .venv on first use.
#   make test      install everything, then run the whole test suite (notebooks included, fast mode)
#   make lab       install everything, then open JupyterLab at notebooks/
#   make pretrain  install everything, then pretrain the course model from the command line
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

.PHONY: setup test lab pretrain clean

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

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

pretrain: setup
	$(VENV)/bin/minimind-edu pretrain $(PRETRAIN_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
