"""Shared fixtures: the real Snakemake CLI on a session work directory, the bundled
model prepared once per session, and a lock that serializes vLLM engines (on two
CPU cores, two engines at once would only slow each other down)."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Excerpts of the public data sets (tests/data/README.md): the suite reads nothing
# outside the repository.
TEST_DATA = REPO / "tests" / "data"
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
VLLM_LOCK = "/tmp/confagg-vllm.lock"

# Config layers of a test pipeline run: the full-scale config, the embedded
# default's overlay, and the tiny test overlay.
BASE_CONFIGS = [
    REPO / "config.yaml",
    REPO / "profiles" / "local" / "embedded.yaml",
    REPO / "tests" / "test_config.yaml",
]

# The suite's temp folder holds up to about 6 GiB at once (the session pipeline 1.7 GiB,
# test_train_trl's two full-parameter checkpoints and model about 4 GiB until it passes);
# on a full disk that surfaces only as an engine or safetensors error deep in a pipeline
# test, so a session refuses to start below this (override: the variable).
MIN_FREE_GIB = float(os.environ.get("CONFAGG_TEST_MIN_FREE_GIB", "8"))


def pytest_sessionstart(session):
    base = Path(session.config.option.basetemp or tempfile.gettempdir()).resolve()
    while not base.exists():
        base = base.parent
    free = shutil.disk_usage(base).free / 2**30
    if free < MIN_FREE_GIB:
        pytest.exit(f"only {free:.1f} GiB free on the disk of {base}; the test suite needs "
                    f"at least {MIN_FREE_GIB:g} GiB there (CONFAGG_TEST_MIN_FREE_GIB)",
                    returncode=3)


# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _FileLock:
    def __init__(self, path: str):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@pytest.fixture
def vllm_lock():
    """Hold the machine-wide vLLM lock for the duration of a test."""
    with _FileLock(VLLM_LOCK):
        yield


def snakemake_command(workdir: Path, *args: str, configfiles=None,
                      profile: str | None = "local") -> list[str]:
    """The real Snakemake CLI on this repo's Snakefile in `workdir`, as an argv."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if profile:
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    cmd += list(args)
    files = BASE_CONFIGS if configfiles is None else configfiles
    if files:  # last: --configfile takes every following word
        cmd += ["--configfile", *map(str, files)]
    return cmd


def snakemake_env(env: dict | None = None) -> dict:
    """The environment Snakemake's jobs need: this venv's tools first on PATH."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            **(env or {})}


def run_snakemake(workdir: Path, *args: str, configfiles=None, check: bool = True,
                  profile: str | None = "local", timeout: float = 1800,
                  env: dict | None = None, lock: bool = True) -> subprocess.CompletedProcess:
    """Run the real Snakemake CLI on this repo's Snakefile in `workdir`.

    Returns the completed process (stdout and stderr merged into .stdout). With
    check=True a non-zero exit fails the test and shows the output's tail. It holds the
    vLLM lock unless lock=False (for a caller that holds it already).
    """
    cmd = snakemake_command(workdir, *args, configfiles=configfiles, profile=profile)
    with _FileLock(VLLM_LOCK) if lock else contextlib.nullcontext():
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, env=snakemake_env(env))
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-6000:]}", pytrace=False)
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}, without `all` and `total`;
    {} when there is nothing to do."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)
            if m.group(1) not in ("total", "all")}


def load_script(name: str):
    """An entry script (workflow/scripts/<name>.py) as a module, to call its main()."""
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" /
                                                  f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Pipeline:
    """The session's pipeline work directory: targets built once, shared by tests."""

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def run(self, *targets: str, **kw) -> subprocess.CompletedProcess:
        return run_snakemake(self.workdir, *targets, **kw)

    def path(self, rel: str) -> Path:
        return self.workdir / rel


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Pipeline:
    """A work directory for the tiny test config (tests/test_config.yaml). Stages build
    on each other's outputs there, so each vLLM job of the suite runs once."""
    return Pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="session")
def bundled_model(pipeline) -> Path:
    """The bundled SmolLM2-135M as a Hugging Face folder, made by the real rule once."""
    pipeline.run("resources/models/smollm2-135m")
    path = pipeline.path("resources/models/smollm2-135m")
    assert (path / "config.json").exists()
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public data excerpts in tests/data (same layout as ../shared/data)."""
    return TEST_DATA
