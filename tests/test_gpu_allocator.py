"""confagg.gpu: distinct devices for concurrent local jobs, waiting, and release on crash."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CHILD = r"""
import os, sys, time
from confagg.gpu import acquire_gpus
devs = acquire_gpus(int(sys.argv[1]), poll_s=0.05)
print(",".join(devs), flush=True)
time.sleep(float(sys.argv[2]))
"""


def spawn(env, n=1, hold=3.0):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(hold)], env=env,
                            stdout=subprocess.PIPE, text=True)


def fake_node(tmp_path, count=4):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(CONFAGG_NUM_GPUS=str(count), CONFAGG_GPU_LOCK_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(sys.path))
    return env


def test_four_jobs_get_four_devices_and_a_fifth_waits(tmp_path):
    env = fake_node(tmp_path)
    first = [spawn(env, hold=4.0) for _ in range(4)]
    got = sorted(p.stdout.readline().strip() for p in first)
    assert got == ["0", "1", "2", "3"]
    start = time.monotonic()
    fifth = spawn(env, hold=0.0)
    dev = fifth.stdout.readline().strip()  # blocks until one of the four exits
    waited = time.monotonic() - start
    assert dev in {"0", "1", "2", "3"}
    assert waited > 1.0, f"fifth job got device {dev} after {waited:.2f}s without waiting"
    for p in [*first, fifth]:
        p.wait(timeout=30)


def test_killed_job_frees_its_device(tmp_path):
    env = fake_node(tmp_path, count=1)
    holder = spawn(env, hold=60)
    assert holder.stdout.readline().strip() == "0"
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
    holder.wait()
    nxt = spawn(env, hold=0)
    assert nxt.stdout.readline().strip() == "0"
    nxt.wait(timeout=30)


def test_multi_gpu_job_and_scheduler_assignment_kept(tmp_path):
    env = fake_node(tmp_path)
    two = spawn(env, n=2, hold=0)
    assert two.stdout.readline().strip() == "0,1"
    two.wait(timeout=30)
    env["CUDA_VISIBLE_DEVICES"] = "3"  # SLURM (or the user) chose already
    kept = spawn(env, n=1, hold=0)
    assert kept.stdout.readline().strip() == "3"
    kept.wait(timeout=30)


def test_no_gpus_means_no_assignment(tmp_path):
    env = fake_node(tmp_path, count=0)
    p = spawn(env, hold=0)
    assert p.stdout.readline().strip() == ""
    p.wait(timeout=30)


def test_preset_list_longer_than_the_job_is_shared_out(tmp_path):
    """`salloc` or a container exports CUDA_VISIBLE_DEVICES for the whole node: each
    one-GPU job takes its own device of that list, and a fifth waits."""
    env = fake_node(tmp_path)
    del env["CONFAGG_NUM_GPUS"]  # the preset list alone says which devices there are
    env["CUDA_VISIBLE_DEVICES"] = "4,5,6,7"
    first = [spawn(env, hold=4.0) for _ in range(4)]
    assert sorted(p.stdout.readline().strip() for p in first) == ["4", "5", "6", "7"]
    start = time.monotonic()
    fifth = spawn(env, hold=0.0)
    dev = fifth.stdout.readline().strip()
    assert dev in {"4", "5", "6", "7"} and time.monotonic() - start > 1.0, dev
    two = spawn(env, n=2, hold=0.0)  # a two-GPU job takes two of the list
    devs = two.stdout.readline().strip().split(",")
    assert len(devs) == 2 and len(set(devs)) == 2 and set(devs) <= {"4", "5", "6", "7"}
    for p in [*first, fifth, two]:
        p.wait(timeout=30)


def test_preset_list_shorter_than_the_job_is_an_error(tmp_path):
    env = fake_node(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = "0"
    proc = subprocess.run([sys.executable, "-c", CHILD, "2", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "job needs 2 GPUs but CUDA_VISIBLE_DEVICES=0 lists 1" in proc.stderr
