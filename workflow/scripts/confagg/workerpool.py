"""Worker processes that run one function per task under a hard per-task CPU-time
limit, and die with their owner.

What it guarantees, and how:

- A hard limit per task that does not depend on machine load: before each task the
  worker sets its own soft RLIMIT_CPU to the CPU time it has used plus the limit
  (rounded up to whole seconds, the kernel's unit), so the kernel ends it with SIGXCPU
  once the task has used that much CPU, even inside C code that never returns to
  Python. A starved worker (a busy machine) is not cut short. A worker that makes no
  progress on the CPU at all is killed after a generous wall-clock backstop.
- No orphans: workers fork from multiprocessing's fork server and ask the kernel
  for SIGKILL when it exits (PR_SET_PDEATHSIG). The fork server exits when no
  process holds its "alive" pipe; the owner holds it and each worker closes its own
  copy, so killing the owner (even with SIGKILL) ends the fork server, every worker,
  and then multiprocessing's resource tracker.
- A worker that dies for another reason (out of memory, killed by hand) loses
  nothing: the task it was running is retried once in a fresh worker and the rest of
  its batch goes back to the queue.
- Thread-safe: concurrent calls of `run` are serialized by a lock.

Task results are ("ok", value), ("error", message) or ("timeout", None).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

START_LIMIT_S = 300.0  # a worker's start-up is waited for apart from any task's limit
CHUNK = 32  # tasks sent to a worker at once (at most): a kill re-queues little
_READY = "ready"
_PR_SET_PDEATHSIG = 1
_main_lock = threading.Lock()  # _main_module_hidden edits the process-wide __main__


def wall_backstop(cpu_limit_s: float) -> float:
    """Wall seconds after which a task that has not finished is killed anyway: far
    beyond what its CPU limit allows on a loaded machine (load 20 on 1 core)."""
    return max(60.0, 20.0 * cpu_limit_s)


# ----------------------------------------------------------------------------- worker side

def _die_with_fork_server() -> None:
    """SIGKILL this worker when its parent (the fork server) exits, and let the fork
    server exit when the owner does by closing this worker's copy of its alive pipe.
    prctl comes first: the fork server cannot exit before the copy is closed."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None or not sys.platform.startswith("linux"):
        return  # not started by the fork server (spawn fallback)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return  # keep the fd: the fork server then outlives the owner, as before
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = None


def _cpu_used() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _limit_cpu(seconds: float, hard: int) -> None:
    import resource

    soft = math.ceil(_cpu_used() + seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _worker_main(conn, fn: Callable, cpu_limit_s: float, preload: tuple[str, ...]) -> None:
    import resource

    _die_with_fork_server()
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)  # the kernel's CPU limit ends the process
    with contextlib.suppress(ValueError, OSError):  # SIGXCPU dumps core by default: none
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    logging.disable(logging.WARNING)  # math-verify warns on every unparsable string
    for name in preload:
        importlib.import_module(name)  # before the ready signal: not charged to a task
    conn.send(_READY)
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        for idx, args in batch:
            _limit_cpu(cpu_limit_s, hard)
            try:
                out = (idx, "ok", fn(*args))
            except Exception as exc:  # a bad input is a result, not a crash
                out = (idx, "error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(out)
            except Exception as exc:  # noqa: BLE001 (an unpicklable result)
                conn.send((idx, "error", f"result not sendable: {type(exc).__name__}: {exc}"))


# ----------------------------------------------------------------------------- owner side

@contextlib.contextmanager
def _main_module_hidden():
    """Start a worker without the owner's main module. multiprocessing imports it again
    in the fork server (and in spawn children), for functions pickled from it; the
    workers need only the task function's module, and that import costs seconds when
    the main module imports vLLM, torch or a trainer (a Snakemake script, OpenRLHF's
    Ray worker) and runs whatever top-level code it has. Without a spec or a file it
    is skipped."""
    with _main_lock:
        main = sys.modules.get("__main__")
        if main is None:
            yield
            return
        saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _context(preload: Sequence[str]):
    """The fork server: a fresh single-threaded process (safe beside torch/vLLM
    threads, like spawn) that imports `preload` once, so a worker starts in
    milliseconds. Spawn where there is no fork server (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


class _Worker:
    def __init__(self, ctx, fn, cpu_limit_s: float, preload: tuple[str, ...]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn, cpu_limit_s, preload),
                                daemon=True)
        with _main_module_hidden():
            self.proc.start()
        child.close()
        self.pending: deque[int] = deque()
        self.since = 0.0  # when its current task was handed over or its last result came
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(START_LIMIT_S):
            self.kill()
            raise RuntimeError(f"a worker process did not start within {START_LIMIT_S}s")
        if self.conn.recv() != _READY:
            raise RuntimeError("a worker process sent a result before its ready signal")
        self.ready = True

    def kill(self) -> int | None:
        """Kill and reap; the exit code (negative: the signal that ended it)."""
        self.proc.kill()
        self.proc.join()
        self.conn.close()
        return self.proc.exitcode


class WorkerPool:
    """Run `fn(*task)` for many tasks in `workers` processes, each task under a hard
    limit of `cpu_limit_s` seconds of CPU time. `fn` must be a module-level function;
    `preload` names modules the fork server imports once."""

    def __init__(self, fn: Callable, workers: int = 2, cpu_limit_s: float = 5.0,
                 preload: Sequence[str] = ()):
        if not cpu_limit_s > 0:
            raise ValueError(f"cpu_limit_s must be > 0, got {cpu_limit_s!r}")
        self.fn = fn
        self.n_workers = max(1, int(workers))
        self.cpu_limit_s = float(cpu_limit_s)
        self.wall_limit_s = wall_backstop(self.cpu_limit_s)
        self.preload = tuple(dict.fromkeys([*preload, fn.__module__]))
        self._ctx = _context(self.preload)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # wall_timeouts: tasks killed by the wall-clock backstop rather than the CPU limit
        self.stats = {"timeouts": 0, "wall_timeouts": 0, "errors": 0, "worker_deaths": 0,
                      "retries": 0}

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill the workers. Waits a moment for a run in another thread; kills anyway."""
        got = self._lock.acquire(timeout=1.0)
        try:
            self._closed = True
            for w in self._workers:
                w.kill()
            self._workers = []
        finally:
            if got:
                self._lock.release()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def run(self, tasks: Sequence[tuple], on_result: Callable[[], None] | None = None
            ) -> list[tuple[str, object]]:
        """(status, value) per task, in order. Tasks run in the order given."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            return _Run(self, tasks, on_result).go()

    # used by _Run
    def _start(self, n: int) -> None:
        while len(self._workers) < n:
            self._workers.append(_Worker(self._ctx, self.fn, self.cpu_limit_s, self.preload))
        for w in self._workers:  # started side by side above, waited for here
            w.wait_ready()

    def _replace(self, w: _Worker) -> int | None:
        code = w.kill()
        new = _Worker(self._ctx, self.fn, self.cpu_limit_s, self.preload)
        self._workers[self._workers.index(w)] = new
        new.wait_ready()
        return code


class _Run:
    """One call of WorkerPool.run: the queue, the busy workers and the results."""

    def __init__(self, pool: WorkerPool, tasks: Sequence[tuple], on_result):
        self.pool, self.tasks, self.on_result = pool, list(tasks), on_result
        self.todo: deque[int] = deque(range(len(self.tasks)))
        self.results: list = [None] * len(self.tasks)
        self.deaths: dict[int, int] = {}
        self.busy: dict = {}  # conn -> worker
        # Batches small enough that every worker gets several (balanced ends).
        self.chunk = max(1, min(CHUNK, len(self.tasks) // (4 * pool.n_workers)))

    def go(self) -> list[tuple[str, object]]:
        if not self.tasks:
            return []
        self.pool._start(min(self.pool.n_workers, len(self.tasks)))
        while self.todo or self.busy:
            self._feed()
            if not self.busy:  # a worker found dead while being fed: feed its successor
                continue
            deadline = min(w.since for w in self.busy.values()) + self.pool.wall_limit_s
            for conn in wait(list(self.busy), timeout=max(0.0, deadline - time.monotonic())):
                self._receive(self.busy[conn])
            now = time.monotonic()
            for w in [w for w in self.busy.values() if now - w.since > self.pool.wall_limit_s]:
                self._lost(w, killed_at_limit=True)
        return self.results

    def _feed(self) -> None:
        for w in self.pool._workers:
            if w.conn not in self.busy and self.todo:
                batch = [self.todo.popleft() for _ in range(min(self.chunk, len(self.todo)))]
                w.pending.extend(batch)
                w.since = time.monotonic()
                self.busy[w.conn] = w
                try:
                    w.conn.send([(i, self.tasks[i]) for i in batch])
                except OSError:  # it died while idle
                    self._lost(w, killed_at_limit=False)

    def _receive(self, w: _Worker) -> None:
        try:
            idx, status, value = w.conn.recv()
        except Exception:  # noqa: BLE001 (EOF or a torn message: the worker is gone)
            self._lost(w, killed_at_limit=False)
            return
        if not w.pending or idx != w.pending[0]:
            raise RuntimeError(f"worker result for task {idx} out of order")
        w.pending.popleft()
        self._done(idx, status, value)
        w.since = time.monotonic()
        if not w.pending:
            del self.busy[w.conn]

    def _lost(self, w: _Worker, *, killed_at_limit: bool) -> None:
        """The worker died or was killed: its current task is a timeout when a limit
        ended it, else retried once; the rest of its batch goes back to the queue."""
        self.busy.pop(w.conn, None)
        head, rest = w.pending.popleft(), list(w.pending)
        w.pending.clear()
        code = self.pool._replace(w)
        if killed_at_limit or code == -signal.SIGXCPU:
            self.pool.stats["wall_timeouts"] += killed_at_limit
            self._done(head, "timeout", None)
            task = self.tasks[head]
            log.warning("task timed out (%.1fs CPU limit): %.200r", self.pool.cpu_limit_s, task)
        else:
            self.pool.stats["worker_deaths"] += 1
            self.deaths[head] = self.deaths.get(head, 0) + 1
            if self.deaths[head] >= 2:
                self._done(head, "error", f"worker process died twice (exit code {code})")
            else:
                self.pool.stats["retries"] += 1
                rest.insert(0, head)
        self.todo.extendleft(reversed(rest))

    def _done(self, idx: int, status: str, value) -> None:
        self.results[idx] = (status, value)
        if status == "timeout":
            self.pool.stats["timeouts"] += 1
        elif status == "error":
            self.pool.stats["errors"] += 1
        if self.on_result:
            self.on_result()
