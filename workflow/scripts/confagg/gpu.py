"""Give each local one-GPU job its own device.

Snakemake's local executor counts `gpu` resources but does not tell a job which
device to use (upstream issue #281). Each job therefore takes an exclusive
`flock` on one lock file per device it needs and sets CUDA_VISIBLE_DEVICES
before CUDA is initialized. The kernel drops the locks when the process exits,
also after a crash or SIGKILL, so a dead job never holds a device. When the
scheduler already chose the job's devices (SLURM), nothing is changed; a preset
list longer than the job needs is shared out the same way.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_held: list[int] = []  # open lock-file descriptors, kept for the life of the process


def device_count() -> int:
    """GPUs on this node: CONFAGG_NUM_GPUS if set (tests fake a count), else nvidia-smi."""
    if os.environ.get("CONFAGG_NUM_GPUS"):
        return int(os.environ["CONFAGG_NUM_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def lock_dir() -> Path:
    d = Path(os.environ.get("CONFAGG_GPU_LOCK_DIR", f"/tmp/confagg-gpu-locks-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _lock_name(device: str) -> str:
    """The lock file of a device id (an index, or a UUID such as GPU-5d3e...)."""
    return "gpu" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def _try_lock(devices: list[str], n: int) -> list[str] | None:
    """Lock `n` of `devices` without blocking; on success keep the locks for the life
    of the process and return the devices, else release what was taken."""
    got: list[tuple[str, int]] = []
    for dev in devices:
        fd = os.open(lock_dir() / _lock_name(dev), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        got.append((dev, fd))
        if len(got) == n:
            _held.extend(fd for _, fd in got)
            return [dev for dev, _ in got]
    for _, fd in got:  # partial: give back, so two jobs never deadlock
        os.close(fd)
    return None


def acquire_gpus(n: int, *, poll_s: float = 1.0, timeout_s: float | None = None) -> list[str]:
    """Reserve `n` devices for this process and export CUDA_VISIBLE_DEVICES.

    Returns the device ids in use. With no CUDA_VISIBLE_DEVICES the candidates are the
    node's devices 0..N-1. A preset CUDA_VISIBLE_DEVICES that lists exactly `n` devices
    is the scheduler's choice for this job (SLURM) and is kept; one that lists more
    (exported by `salloc` or a container for the whole node) is the pool this job
    takes its own `n` from, so concurrent jobs get distinct devices. With no GPUs on
    the node (a CPU run) this does nothing and returns [].
    """
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        listed = [d.strip() for d in preset.split(",") if d.strip()]
        # Not locked when exact: under SLURM's device cgroups two jobs on a node may
        # both see their own, different GPU as "0".
        if n <= 0 or len(listed) == n or not listed:
            log.info("CUDA_VISIBLE_DEVICES=%s set before the job started (scheduler or user): "
                     "kept", preset)
            return listed
        if len(listed) < n:
            raise RuntimeError(f"job needs {n} GPUs but CUDA_VISIBLE_DEVICES={preset} "
                               f"lists {len(listed)}")
        candidates = listed
        origin = f"of the preset CUDA_VISIBLE_DEVICES={preset}"
    else:
        total = device_count()
        if n <= 0 or total == 0:
            return []
        if n > total:
            raise RuntimeError(f"job needs {n} GPUs but this node has {total}")
        candidates = [str(dev) for dev in range(total)]
        origin = f"of {total}"
    start = time.monotonic()
    waited = False
    while True:
        devices = _try_lock(candidates, n)
        if devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            log.info("CUDA_VISIBLE_DEVICES=%s (%s; lock files in %s)",
                     os.environ["CUDA_VISIBLE_DEVICES"], origin, lock_dir())
            return devices
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {n} free GPU(s) after {timeout_s:.0f}s")
        if not waited:
            log.info("waiting for %d free GPU(s) %s", n, origin)
            waited = True
        time.sleep(poll_s)
