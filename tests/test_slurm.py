"""The embedded default through profiles/slurm on a real one-node SLURM cluster.

tests/slurm/cluster.sh installs Debian's slurm-wlm, slurmdbd, munge and MariaDB,
starts munged, mariadbd, slurmdbd, slurmctld and slurmd (one node: this machine's
CPUs and memory, partitions `cpu` and `gpu`, 4 fake GPUs as generic resources), and
stops them at the end of the session. Snakemake runs with `--profile profiles/slurm`
plus a generated second profile: profiles/slurm's resources merged key by key with
tests/slurm/overlay.yaml (sizes that fit the node). Every job goes through
snakemake-executor-plugin-slurm as an sbatch job; afterwards SLURM's accounting
(sacct) must show, per job, the partition, GPUs, time limit, memory, CPUs and account
that the merged profile gives its rule, and state COMPLETED.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
OVERLAY = REPO / "tests" / "slurm" / "overlay.yaml"
SLURM_DIR = Path(os.environ.get("CONFAGG_SLURM_DIR", "/tmp/confagg-slurm"))
SLURM_CONF = Path(os.environ.get("CONFAGG_SLURM_ETC", "/etc/slurm")) / "slurm.conf"
# Keys the overlay may change: sizes and the account. Partitions and GPU counts must
# stay profiles/slurm's, since they are what this test checks.
OVERLAY_KEYS = {"runtime", "mem_mb", "cpus_per_task", "slurm_account"}


def _cluster(cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CONFAGG_SLURM_DIR": str(SLURM_DIR)})


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node cluster, started for the session (packages installed if missing)."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (apt-get install, daemons as root)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    was_running = _cluster("status").stdout.count(": running") == 5
    t0 = time.monotonic()
    proc = _cluster("start")
    if proc.returncode != 0:
        pytest.fail(f"tests/slurm/cluster.sh start failed:\n{proc.stdout}{proc.stderr}",
                    pytrace=False)
    print(f"SLURM test cluster up in {time.monotonic() - t0:.0f}s")
    yield {"SLURM_CONF": str(SLURM_CONF)}
    if not was_running:
        _cluster("stop", timeout=120)


def _merged_resources() -> tuple[dict, dict, dict]:
    """profiles/slurm's default-resources and set-resources, overlaid key by key by
    tests/slurm/overlay.yaml; and the overlay's further profile settings."""
    profile = yaml.safe_load(PROFILE.read_text())
    overlay = yaml.safe_load(OVERLAY.read_text())
    for entries in [overlay["default-resources"], *overlay["set-resources"].values()]:
        assert set(entries) <= OVERLAY_KEYS, f"overlay may only change {OVERLAY_KEYS}: {entries}"
    default = {**profile["default-resources"], **overlay["default-resources"]}
    per_rule = {rule: dict(v) for rule, v in profile["set-resources"].items()}
    for rule, entries in overlay["set-resources"].items():
        assert rule in per_rule, f"overlay names {rule}, which profiles/slurm does not"
        per_rule[rule].update(entries)
    return default, per_rule, overlay.get("settings", {})


def _expected(rule: str, default: dict, per_rule: dict) -> dict:
    return {**default, **per_rule.get(rule, {})}


def _tres(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _mem_mb(value: str) -> int:
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", value)
    assert m, f"memory {value!r}"
    return round(float(m.group(1)) * units[m.group(2) or "M"])


SACCT_FIELDS = ["JobIDRaw", "JobName", "Partition", "Account", "State", "ExitCode",
                "TimelimitRaw", "AllocCPUS", "AllocTRES", "ReqMem", "WorkDir", "Comment"]


def _sacct_jobs(env: dict, workdir: Path) -> list[dict]:
    out = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "--starttime", "now-1days",
         "--format", ",".join(SACCT_FIELDS)],
        capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
    rows = [dict(zip(SACCT_FIELDS, line.split("|"), strict=True))
            for line in out.splitlines() if line.strip()]
    return [r for r in rows if Path(r["WorkDir"]) == workdir]


def _planned_jobs(output: str) -> Counter:
    """Snakemake's own 'Job stats' table (the first one printed): rule -> job count."""
    lines = output[output.index("Job stats:"):].splitlines()[1:]
    counts = Counter()
    for line in lines:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if m and m.group(1) == "total":
            return counts
        if m:
            counts[m.group(1)] = int(m.group(2))
    raise AssertionError(f"no job stats in the output:\n{output[:3000]}")


def test_embedded_default_on_slurm(slurm_cluster, tmp_path):
    default, per_rule, settings = _merged_resources()
    # The second profile: the merged resources and the test settings. Everything
    # else (executor: slurm, jobs, latency-wait, ...) comes from profiles/slurm.
    overlay_profile = tmp_path / "slurm-test-profile"
    overlay_profile.mkdir()
    (overlay_profile / "config.yaml").write_text(yaml.safe_dump(
        {"default-resources": default, "set-resources": per_rule, **settings}, sort_keys=False))
    workdir = tmp_path / "work"
    workdir.mkdir()

    t0 = time.monotonic()
    proc = run_snakemake(workdir, "--profile", str(REPO / "profiles" / "slurm"),
                         "--profile", str(overlay_profile), profile=None,
                         env=slurm_cluster, timeout=1500)
    elapsed = time.monotonic() - t0
    print(f"snakemake --profile profiles/slurm: {elapsed:.0f}s")
    out = proc.stdout
    assert "SLURM run ID" in out, out[-3000:]
    assert (workdir / "results" / "report" / "summary.csv").exists()

    planned = _planned_jobs(out)
    jobs = _sacct_jobs(slurm_cluster, workdir.resolve())
    assert jobs, "sacct shows no job from this run"
    by_rule = Counter()
    mismatches = []
    for job in jobs:
        m = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", job["Comment"])
        assert m, f"SLURM job {job['JobIDRaw']} has comment {job['Comment']!r}"
        rule = m.group(1)
        by_rule[rule] += 1
        want = _expected(rule, default, per_rule)
        tres = _tres(job["AllocTRES"])
        got = {
            "state": (job["State"], job["ExitCode"]),
            "slurm_partition": job["Partition"],
            "slurm_account": job["Account"],
            "gpu": int(tres.get("gres/gpu", 0)),
            "runtime": int(job["TimelimitRaw"]),
            "mem_mb": _mem_mb(tres["mem"]),
            "cpus_per_task": int(job["AllocCPUS"]),
        }
        expect = {"state": ("COMPLETED", "0:0"),
                  **{k: want[k] for k in ("slurm_partition", "slurm_account", "gpu", "runtime",
                                          "mem_mb", "cpus_per_task")}}
        if got != expect:
            mismatches.append(f"{rule} (SLURM job {job['JobIDRaw']}): SLURM has {got}, "
                              f"the profile says {expect}")
    assert not mismatches, "\n".join(mismatches)

    # Every job Snakemake planned ran as one SLURM job (`all` has nothing to run).
    planned.pop("all", None)
    assert by_rule == planned, f"SLURM jobs per rule {dict(by_rule)} != planned {dict(planned)}"
    # The GPU rules ran on the gpu partition with a GPU, the rest without.
    gpu_rules = {r for r in by_rule if _expected(r, default, per_rule)["gpu"] > 0}
    assert {"generate", "aggregate", "train_trl"} <= gpu_rules

    # SLURM chose the device (its CUDA_VISIBLE_DEVICES from the fake gres) and the
    # job kept it; vLLM on the CPU ran with it set.
    logs = sorted((workdir / "logs").glob("generate/**/shard*.log")) + sorted(
        (workdir / "logs").glob("evaluate/**/aggregate_*.log"))
    assert len(logs) == planned["generate"] + planned["aggregate"]
    for log in logs:
        text = log.read_text()
        assert re.search(r"CUDA_VISIBLE_DEVICES=[0-3] set before the job started", text), log
