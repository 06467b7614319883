"""Job of tests/gpu_jobs/Snakefile: acquire_gpus as the entry scripts call it, then
record the devices and the times (records/ lies outside the job's output, which
Snakemake deletes when the job fails)."""

import json
import os
import signal
import time
from pathlib import Path

from confagg.gpu import acquire_gpus


def record(smk, name: str, rec: dict) -> None:
    path = Path(smk.params.records) / f"{smk.wildcards.shard}.{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    tmp.rename(path)


def main(smk):
    requested = time.time()
    devices = acquire_gpus(int(smk.resources.gpu), poll_s=0.05)
    rec = {"shard": smk.wildcards.shard, "gpu": int(smk.resources.gpu), "devices": devices,
           "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "requested": requested,
           "start": time.time(), "pid": os.getpid()}
    Path(smk.params.records).mkdir(parents=True, exist_ok=True)
    try:  # the first job to get here is the one that crashes
        os.close(os.open(Path(smk.params.records) / "crash.flag",
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        crash = True
    except FileExistsError:
        crash = False
    record(smk, "start", rec)
    if crash:
        time.sleep(smk.params.crash_after_s)
        record(smk, "end", {**rec, "end": time.time(), "crashed": True})
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs; the kernel drops the lock
    time.sleep(smk.params.hold_s)
    record(smk, "end", {**rec, "end": time.time(), "crashed": False})
    Path(smk.output[0]).write_text(json.dumps(rec))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
