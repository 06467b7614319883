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

It takes about 15 minutes on 2 cores (every job is an sbatch job), more than `make
test`'s budget allows beside the rest, so it runs when CONFAGG_TEST_SLURM=1 (`make
test-cluster`) and is reported as skipped otherwise.
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
from conftest import BASE_CONFIGS, REPO, run_snakemake

needs_cluster = pytest.mark.skipif(
    os.environ.get("CONFAGG_TEST_SLURM") != "1",
    reason="starts a one-node SLURM cluster, ~15 min: run with make test-cluster")

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


def _check_job(job: dict, want: dict, state: tuple[str, str]) -> list[str]:
    """SLURM's record of one job against what the merged profile gives its rule."""
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
    expect = {"state": state, **{k: want[k] for k in got if k != "state"}}
    if got == expect:
        return []
    return [f"SLURM job {job['JobIDRaw']} ({job['Comment']}): SLURM has {got}, "
            f"the profile says {expect}"]


def _rule_of(job: dict) -> str:
    m = re.fullmatch(r"rule_(\w+?)(_wildcards_.*)?", job["Comment"])
    assert m, f"SLURM job {job['JobIDRaw']} has comment {job['Comment']!r}"
    return m.group(1)


class SlurmRun:
    def __init__(self, tmp: Path, env: dict):
        self.default, self.per_rule, settings = _merged_resources()
        self.env = env
        # The second profile: the merged resources and the test settings. Everything
        # else (executor: slurm, jobs, latency-wait, ...) comes from profiles/slurm.
        self.profile = tmp / "slurm-test-profile"
        self.profile.mkdir()
        (self.profile / "config.yaml").write_text(yaml.safe_dump(
            {"default-resources": self.default, "set-resources": self.per_rule, **settings},
            sort_keys=False))
        self.workdir = (tmp / "work").resolve()
        self.workdir.mkdir()

    def run(self, *args, **kw):
        return run_snakemake(self.workdir, "--profile", str(REPO / "profiles" / "slurm"),
                             "--profile", str(self.profile), *args, profile=None,
                             env=self.env, **kw)

    def expected(self, rule: str) -> dict:
        return {**self.default, **self.per_rule.get(rule, {})}

    def jobs(self) -> list[dict]:
        return _sacct_jobs(self.env, self.workdir)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """The embedded default (tests/test_config.yaml sizes) run through profiles/slurm."""
    run = SlurmRun(tmp_path_factory.mktemp("slurm"), slurm_cluster)
    t0 = time.monotonic()
    proc = run.run(timeout=1500)
    took = re.findall(r"Elapsed time: (\S+)", proc.stdout)
    print(f"snakemake --profile profiles/slurm: {time.monotonic() - t0:.0f}s with the vLLM "
          f"lock wait, Snakemake's own elapsed time {took[-1] if took else '?'}")
    run.output = proc.stdout
    return run


@needs_cluster
def test_embedded_default_on_slurm(slurm_run):
    out, workdir = slurm_run.output, slurm_run.workdir
    assert "SLURM run ID" in out, out[-3000:]
    assert (workdir / "results" / "report" / "summary.csv").exists()

    planned = _planned_jobs(out)
    jobs = slurm_run.jobs()
    assert jobs, "sacct shows no job from this run"
    by_rule = Counter()
    mismatches = []
    for job in jobs:
        rule = _rule_of(job)
        by_rule[rule] += 1
        mismatches += _check_job(job, slurm_run.expected(rule), ("COMPLETED", "0:0"))
    assert not mismatches, "\n".join(mismatches)

    # Every job Snakemake planned ran as one SLURM job, but the Snakefile's localrules
    # (light jobs, run by Snakemake itself: printed as "localrule").
    local = set(re.findall(r"^localrule (\w+):", out, re.M))
    assert {"prepare_dataset", "merge_generated", "report"} <= local, local
    for rule in local | {"all"}:
        planned.pop(rule, None)
    assert by_rule == planned, f"SLURM jobs per rule {dict(by_rule)} != planned {dict(planned)}"
    # The GPU rules asked for GPUs (and the test checked SLURM gave them).
    gpu_rules = {r for r in by_rule if slurm_run.expected(r)["gpu"] > 0}
    assert gpu_rules == {"generate", "aggregate", "train_trl"}

    # SLURM chose the devices (its CUDA_VISIBLE_DEVICES from the fake gres), the vLLM
    # jobs kept them, and vLLM's CPU build ran with the variable set. (train_trl with
    # trl.use_cpu does not look at devices at all.)
    logs = sorted((workdir / "logs").glob("generate/**/shard*.log")) + sorted(
        (workdir / "logs").glob("evaluate/**/aggregate_*.log"))
    assert len(logs) == planned["generate"] + planned["aggregate"]
    for log in logs:
        assert re.search(r"CUDA_VISIBLE_DEVICES=[0-3] set before the job started",
                         log.read_text()), log


@needs_cluster
def test_train_openrlhf_allocation_on_slurm(slurm_run, tmp_path):
    """train_openrlhf (the 4-GPU rule) gets its profile entry from SLURM: 4 GPUs on the
    gpu partition. OpenRLHF itself cannot run here (no GPU, no OpenRLHF environment:
    it imports CUDA-only vllm/deepspeed/flash_attn), so the job is expected to fail
    inside its allocation; the test checks the allocation and the reason."""
    layer = tmp_path / "openrlhf.yaml"
    # `python`: the job's own environment, which has no OpenRLHF (the reason checked below).
    layer.write_text(yaml.safe_dump({"training": {"trainer": "openrlhf", "run": "slurm-openrlhf",
                                                  "openrlhf": {"python": "python"}}}))

    proc = slurm_run.run("results/train/slurm-openrlhf/model", configfiles=[*BASE_CONFIGS, layer],
                         check=False, timeout=600)
    assert proc.returncode != 0
    jobs = [j for j in slurm_run.jobs() if _rule_of(j) == "train_openrlhf"]
    assert len(jobs) == 1, proc.stdout[-3000:]
    job = jobs[0]
    want = slurm_run.expected("train_openrlhf")
    assert want["gpu"] == 4 and want["slurm_partition"] == "gpu"
    assert not _check_job(job, want, (job["State"], job["ExitCode"])), _check_job(
        job, want, ("?", "?"))
    assert job["State"] == "FAILED", job
    log = (slurm_run.workdir / "logs" / "train" / "slurm-openrlhf" / "openrlhf.log").read_text()
    assert "No module named" in log and "openrlhf" in log, log[-2000:]


def test_stop_removes_the_configs_it_wrote_and_only_those(tmp_path):
    """A slurm.conf left behind names a controller that is gone: every SLURM client then
    waits about 10 s for it, and Snakemake's SLURM plugin runs `scontrol show config` each
    time Snakemake starts, even for local runs. So `stop` removes what `start` wrote."""
    etc = tmp_path / "etc"
    etc.mkdir()
    mark = "# Written by tests/slurm/cluster.sh"
    for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
        (etc / name).write_text(f"{mark}\nClusterName=confagg\n")
    (etc / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")  # not ours: kept
    proc = subprocess.run(["bash", str(CLUSTER_SH), "stop"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CONFAGG_SLURM_ETC": str(etc),
                                           "CONFAGG_SLURM_DIR": str(tmp_path / "run")})
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in etc.iterdir()) == ["cgroup.conf"], proc.stderr
