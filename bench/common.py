"""What every stage shares: sizes, targets, the shared data, the vLLM lock, the child
command line."""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# CONFAGG_BENCH_DATA: another folder with the same layout (the tests use tests/data)
SHARED_DATA = Path(os.environ.get("CONFAGG_BENCH_DATA") or REPO.parent / "shared" / "data")
VLLM_LOCK = "/tmp/confagg-vllm.lock"

# figure -> (comparison, target); None: reported only
TARGETS = {
    "gen_overhead_ratio": ("<=", 1.05),
    "confidence_speedup": (">=", 20.0),
    "grading_speedup": (">=", 5.0),
    "grading_agreement": ("==", 1.0),
    "conf_bytes_per_token": ("<=", 2.2),
    "eval_seconds": None,
    "online_token_ratio": None,
    "online_accuracy_delta": None,
    "train_lora_step_ratio": None,
    "peak_rss_mb": None,
}

SIZES = {
    "full": {
        "runs": 3,
        "gen_problems": 8, "gen_n": 4, "gen_max_tokens": 128,
        "conf_tokens": 1_000_000, "conf_min_len": 512, "conf_max_len": 8192,
        "grade_problems": 500, "grade_samples": 64, "grade_samples_small": 16,
        "eval_problems": 30, "eval_samples": 128, "eval_n_draws": None, "eval_bootstrap": None,
        "storage_synthetic_samples": 0,
        "online_problems": 16, "online_n": 16, "online_max_tokens": 192,
        "train_prompts": 8, "train_steps": 3, "train_max_tokens": 16,
    },
    "quick": {
        "runs": 1,
        "gen_problems": 0, "gen_n": 0, "gen_max_tokens": 0,
        "conf_tokens": 40_000, "conf_min_len": 256, "conf_max_len": 4096,
        "grade_problems": 40, "grade_samples": 8, "grade_samples_small": 0,
        "eval_problems": 10, "eval_samples": 16, "eval_n_draws": 50, "eval_bootstrap": 100,
        "storage_synthetic_samples": 64,
        "online_problems": 0, "online_n": 0, "online_max_tokens": 0,
        "train_prompts": 0, "train_steps": 0, "train_max_tokens": 0,
    },
}


# ============================================================================ helpers

def median(xs):
    return float(statistics.median(xs)) if xs else math.nan


def embedded_config() -> dict:
    """The embedded default's settings (config.yaml + profiles/local/embedded.yaml)."""
    from confagg.config import load_config

    return load_config(REPO / "config.yaml", REPO / "profiles" / "local" / "embedded.yaml")


def math500_rows(limit: int | None = None) -> list[dict]:
    path = SHARED_DATA / "benchmarks" / "math500.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the shared data (MATH-500) is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def rounds_order(names: list[str], r: int) -> list[str]:
    """The variants' order in round r: rotated every round, so none always goes first."""
    k = r % len(names)
    return names[k:] + names[:k]


class VllmLock:
    """The machine-wide lock every process that starts a vLLM engine holds."""

    def __enter__(self):
        self.fd = os.open(VLLM_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)



def bench_command(*args: str) -> list[str]:
    """`python -m bench ...` for a child process."""
    return [sys.executable, "-m", "bench", *args]


def child_env() -> dict:
    """The environment of a child: the repository on its path, so `-m bench` resolves
    from any working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def check(name: str, value) -> bool | None:
    target = TARGETS.get(name)
    if target is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    op, x = target
    return {"<=": value <= x, ">=": value >= x, "==": value == x}[op]
