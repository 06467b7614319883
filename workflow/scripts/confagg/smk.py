"""Helpers for the thin entry scripts that Snakemake's `script:` directive runs.

A job dies with the Snakemake process that started it. Every Snakemake process that
parses the workflow adds itself to CONFAGG_SNAKEMAKE_PROCS (`mark_snakemake_process`,
called by rules/common.smk); its jobs inherit the variable. `setup_logging` (every
entry script calls it first) then starts `die_with_snakemake`: a thread that watches
those of the listed processes that are the job's ancestors and, once one is gone
(SIGKILL to Snakemake's PID alone leaves its jobs running), kills the job's own
descendants and the job. Until then no output is published by `confagg.io`'s atomic
writers once one is gone, so an orphan never replaces what a newer run wrote.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

from . import io as cio

ENV_KEY = "CONFAGG_SNAKEMAKE_PROCS"
POLL_S = 0.1


def setup_logging(snakemake, level: int = logging.INFO) -> logging.Logger:
    """Send logging, stdout and stderr (tqdm bars, child processes too) to the rule's log,
    and make the job die with its Snakemake (`die_with_snakemake`)."""
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
    log = logging.getLogger(f"confagg.rule.{getattr(snakemake, 'rule', 'script')}")
    die_with_snakemake(log)
    # torch, vLLM's CPU backend and the BLAS libraries size their pools from this
    log.info("host %s, %s threads (OMP_NUM_THREADS=%s)", socket.gethostname(),
             getattr(snakemake, "threads", "?"), os.environ.get("OMP_NUM_THREADS", "unset"))
    return log


# ---------------------------------------------------------------- processes (Linux /proc)

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the PID, its identity."""
    st = _stat(pid)
    return int(st[19]) if st and st[0] not in ("Z", "X") else None


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        st = _stat(pid)
        if st is None:
            break
        pid = int(st[1])
        out.append(pid)
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _namespace() -> str:
    """This host and PID namespace: PIDs listed from elsewhere mean nothing here."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = "pid:?"
    return f"{socket.gethostname()}/{ns}"


# ---------------------------------------------------------------- the Snakemake side

def mark_snakemake_process() -> None:
    """Add this (Snakemake) process to CONFAGG_SNAKEMAKE_PROCS for the jobs it starts."""
    entry = f"{_namespace()} {os.getpid()} {_start_time(os.getpid())}"
    entries = [e for e in os.environ.get(ENV_KEY, "").split(";") if e]
    if entry not in entries:
        entries.append(entry)
    os.environ[ENV_KEY] = ";".join(entries)


# ---------------------------------------------------------------- the job side

class Orphaned(RuntimeError):
    """The Snakemake process that started this job is gone."""


def snakemake_processes(environ=None) -> tuple[list[tuple[int, int]], str | None]:
    """(the listed Snakemake processes that are this process's ancestors, as (pid, start
    time); why this process is an orphan already, or None).

    Entries from another host or PID namespace are ignored. The last entry of this
    namespace is the Snakemake that started the job: when it is gone, the job was
    orphaned before it could watch it.
    """
    here = _namespace()
    listed = []
    for entry in (environ if environ is not None else os.environ).get(ENV_KEY, "").split(";"):
        parts = entry.rsplit(" ", 2)
        if len(parts) == 3 and parts[0] == here and parts[1].isdigit() and parts[2].isdigit():
            listed.append((int(parts[1]), int(parts[2])))
    if not listed:
        return [], None
    pid, start = listed[-1]
    if _start_time(pid) != start:
        return [], f"Snakemake (pid {pid}) that started this job is gone"
    ancestors = set(_ancestors(os.getpid()))
    return [(p, s) for p, s in listed if p in ancestors and _start_time(p) == s], None


def _gone(watched: list[tuple[int, int]]) -> str | None:
    for pid, start in watched:
        if _start_time(pid) != start:
            return f"Snakemake (pid {pid}) that started this job is gone"
    return None


def _die(log: logging.Logger, why: str) -> None:
    """Kill this job's descendants, then the job itself (SIGKILL: nothing else runs)."""
    try:
        log.error("%s: stopping this job and its processes, publishing nothing", why)
        for stream in (sys.stderr, sys.stdout):
            stream.flush()
    except Exception:  # the log may be gone too; dying matters more
        pass
    me = os.getpid()
    for _ in range(2):  # a second pass catches a child forked during the first
        for pid in reversed(_descendants(me)):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    os.kill(me, signal.SIGKILL)


_watching: list[tuple[int, int]] | None = None


def die_with_snakemake(log: logging.Logger | None = None, *, poll_s: float = POLL_S) -> None:
    """Watch this job's Snakemake processes from a daemon thread; when one is gone, kill
    the job's descendants and the job. Atomic writes check them first too (`confagg.io`).
    Does nothing outside a marked Snakemake (no CONFAGG_SNAKEMAKE_PROCS); once per process."""
    global _watching
    if _watching is not None:
        return
    log = log or logging.getLogger("confagg.smk")
    watched, orphaned = snakemake_processes()
    if orphaned:
        _die(log, orphaned)
    _watching = watched
    if not watched:
        return

    def check() -> None:
        why = _gone(watched)
        if why:
            raise Orphaned(f"{why}; a newer run may own this output")

    cio.add_publish_check(check)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            why = _gone(watched)
            if why:
                _die(log, why)

    threading.Thread(target=watch, name="confagg-die-with-snakemake", daemon=True).start()
    log.info("watching Snakemake process(es) %s: this job dies with them",
             ", ".join(str(p) for p, _ in watched))
