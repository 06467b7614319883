#!/usr/bin/env bash
# Snakemake runs this inside the new train-openrlhf conda environment. flash-attn's build
# imports torch, which pip's build isolation hides: it is built here, after torch, without
# isolation (nvcc of a CUDA 13 toolkit; FLASH_ATTN=<wheel file or URL> takes a prebuilt
# wheel). OpenRLHF's requirements are all in train-openrlhf.yaml. Pins: those of
# requirements/constraints-openrlhf.txt (tests/test_envs.py checks them).
set -euo pipefail
python -m pip install --no-build-isolation "${FLASH_ATTN:-flash-attn==2.8.3}"
python -m pip install --no-deps openrlhf==0.11.2
