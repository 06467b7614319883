"""The suite's own precondition: it refuses to start on a disk too full to hold its
pipeline, naming the folder and the free space, instead of failing deep in vLLM."""

import os
import subprocess
import sys

from conftest import REPO


def test_session_refuses_to_start_without_the_disk_space_it_needs(tmp_path):
    env = {**os.environ, "CONFAGG_TEST_MIN_FREE_GIB": str(10**9)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'bt'}", str(REPO / "tests" / "test_voting.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "GiB free on the disk of" in out and "needs at least 1e+09 GiB" in out, out
    assert "passed" not in out, out
