"""profiles/gpu4 with the real Snakemake scheduler and confagg.gpu, on a fake 4-GPU node.

tests/test_gpu_allocator.py shows the allocator alone (processes started by hand);
here Snakemake starts the jobs under the gpu4 profile's own resources (`gpu=4` on
the node, `generate: gpu=1` from its set-resources), and each job takes its device
through `acquire_gpus`, as the workflow's entry scripts do (tests/gpu_jobs/). The
node's device count is faked with CONFAGG_NUM_GPUS, or the node's devices are a preset
CUDA_VISIBLE_DEVICES list; no GPU is needed.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, SNAKEMAKE, VENV_BIN, VLLM_LOCK, _FileLock

JOBS = REPO / "tests" / "gpu_jobs"
HOLD_S = 6.0  # every job but the crashing one holds its device this long
N_JOBS = 6


def concurrent(records, t):
    return [r for r in records if r["start"] <= t < r["end"]]


# The node's devices: counted (CONFAGG_NUM_GPUS stands in for nvidia-smi), or a preset
# CUDA_VISIBLE_DEVICES for the whole node, as `salloc` or a container exports it.
NODES = {"counted": {"CONFAGG_NUM_GPUS": "4"}, "preset": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}}


@pytest.mark.parametrize("node", sorted(NODES))
def test_gpu4_profile_gives_distinct_devices_waits_and_frees_a_crashed_jobs_device(tmp_path,
                                                                                   node):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "CONFAGG_NUM_GPUS")}
    env.update(NODES[node], CONFAGG_GPU_LOCK_DIR=str(tmp_path / "locks"),
               PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}")
    cmd = [SNAKEMAKE, "--snakefile", str(JOBS / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "gpu4"),
           "--config", f"n_jobs={N_JOBS}", f"hold_s={HOLD_S}", "crash_after_s=1"]
    with _FileLock(VLLM_LOCK):  # timings: keep other engines off the two cores meanwhile
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode != 0, out[-3000:]  # the crashed job fails the run ...
    rec_dir = tmp_path / "records"
    ends = [json.loads((rec_dir / f"{s}.end.json").read_text()) for s in range(N_JOBS)]
    crashed = [r for r in ends if r["crashed"]]
    assert len(crashed) == 1, ends
    done = sorted(p.name for p in (tmp_path / "done").iterdir())
    # ... but keep-going (the profile's) runs every other job to its end
    assert done == sorted(f"{r['shard']}.json" for r in ends if not r["crashed"])

    for r in ends:  # the profile's set-resources reached the job; one device each
        assert r["gpu"] == 1, r
        assert r["devices"] == [r["cuda"]] and r["cuda"] in {"0", "1", "2", "3"}, r

    order = sorted(ends, key=lambda r: r["start"])
    first4, fifth, sixth = order[:4], order[4], order[5]
    # Four jobs at once, on four distinct devices.
    assert max(r["start"] for r in first4) < min(r["end"] for r in first4), first4
    assert sorted(r["cuda"] for r in first4) == ["0", "1", "2", "3"], first4
    # Never more than four at once, never one device twice at the same time.
    for t in [r["start"] for r in ends]:
        running = concurrent(ends, t)
        assert len(running) <= 4, running
        assert len({r["cuda"] for r in running}) == len(running), running
    # The fifth job was not even started while four ran: it waited for the first end,
    # which is the crash (the first job to pass acquire_gpus is the one that crashes).
    assert crashed[0] in first4
    assert crashed[0]["end"] == min(r["end"] for r in ends)
    assert fifth["requested"] >= crashed[0]["end"], (fifth, crashed)
    # SIGKILL ran no cleanup, yet the crashed job's device went to the fifth job
    # while the other three still held theirs.
    still_held = [r for r in first4 if not r["crashed"]]
    assert fifth["start"] < min(r["end"] for r in still_held), (fifth, still_held)
    assert fifth["cuda"] == crashed[0]["cuda"]
    # The sixth waited for a device to be given back by a job that ended normally.
    assert sixth["requested"] >= min(r["end"] for r in still_held), (sixth, still_held)
    assert sixth["cuda"] in {r["cuda"] for r in still_held if r["end"] <= sixth["start"]}
    log = (tmp_path / ".snakemake" / "log").glob("*.snakemake.log")
    assert any(f"shard={crashed[0]['shard']}" in p.read_text() for p in log), out[-3000:]
