"""Give each local one-GPU job its own device.

Snakemake's local executor counts `gpu` resources but does not tell a job which
device to use (upstream issue #281). Each job therefore takes an exclusive
`flock` on one lock file per device it needs and sets CUDA_VISIBLE_DEVICES
before CUDA is initialized. The kernel drops the locks when the process exits,
also after a crash or SIGKILL, so a dead job never holds a device. When the
scheduler already chose devices (SLURM, or the user), nothing is changed.
"""

from __future__ import annotations

import fcntl
import logging
import os
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


def acquire_gpus(n: int, *, poll_s: float = 1.0, timeout_s: float | None = None) -> list[str]:
    """Reserve `n` devices for this process and export CUDA_VISIBLE_DEVICES.

    Returns the device ids in use. A scheduler's own assignment is kept as is;
    with no GPUs on the node (a CPU run) this does nothing and returns [].
    """
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        log.info("CUDA_VISIBLE_DEVICES=%s set before the job started (scheduler or user): kept",
                 preset)
        return [d for d in preset.split(",") if d]
    total = device_count()
    if n <= 0 or total == 0:
        return []
    if n > total:
        raise RuntimeError(f"job needs {n} GPUs but this node has {total}")
    start = time.monotonic()
    waited = False
    while True:
        got: list[tuple[int, int]] = []
        for dev in range(total):
            fd = os.open(lock_dir() / f"gpu{dev}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            got.append((dev, fd))
            if len(got) == n:
                break
        if len(got) == n:
            _held.extend(fd for _, fd in got)
            devices = [str(dev) for dev, _ in got]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            log.info("CUDA_VISIBLE_DEVICES=%s (lock files in %s)", os.environ["CUDA_VISIBLE_DEVICES"],
                     lock_dir())
            return devices
        for _, fd in got:  # partial: give back and wait, so two jobs never deadlock
            os.close(fd)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {n} free GPU(s) after {timeout_s:.0f}s")
        if not waited:
            log.info("waiting for %d free GPU(s) of %d", n, total)
            waited = True
        time.sleep(poll_s)
