"""Helpers for the thin entry scripts that Snakemake's `script:` directive runs."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(snakemake, level: int = logging.INFO) -> logging.Logger:
    """Send logging, stdout and stderr (tqdm bars, child processes too) to the rule's log."""
    logs = list(getattr(snakemake, "log", []) or [])
    if logs:
        os.makedirs(os.path.dirname(os.path.abspath(logs[0])), exist_ok=True)
        fh = open(logs[0], "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as the job)
        sys.stdout.flush()
        sys.stderr.flush()
        # Redirect the file descriptors, not only sys.stdout: vLLM's worker
        # processes and native libraries write straight to fd 1 and 2.
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        sys.stdout = sys.stderr = fh
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return logging.getLogger(f"confagg.rule.{getattr(snakemake, 'rule', 'script')}")
