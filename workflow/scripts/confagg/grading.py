"""Answer extraction and math-verify grading that no input can hang.

math-verify's own timeouts use `signal.alarm`, which only works in a process's main
thread, and some inputs hang regardless (upstream issues #50, #55, #65). So every
parse and verify runs in worker processes that the parent kills and replaces when
an item exceeds its time limit. Results are cached per (gold, answer) pair: many
samples of one problem share an answer string.

What keeps it fast: answers are compared as stripped strings, so copies of one
answer cost one lookup; pairs of plain integers are decided in the parent; the
rest go to the workers in batches grouped by gold answer, so a worker parses each
gold once and each distinct answer once (per-worker parse cache). Workers fork from
a server process that has math-verify imported already, so starting one, or
replacing one killed at its time limit, costs milliseconds, not an interpreter
start and a math-verify import.

Convention: the gold answer is always parsed first (`verify(gold, pred)`, which is
asymmetric), and both sides are wrapped in ``\\boxed{}`` so that bare LaTeX such as
``0,i\\sqrt{6},-i\\sqrt{6}`` is parsed as one expression.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing as mp
import re
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_answer", "timeout", "error")
_CHUNK = 32  # items sent to a worker at once (at most); small enough that a kill loses little
# A worker's start-up (a fork, or the import of the parent's main module) is waited for
# apart from the per-item time limit, up to this long.
_START_LIMIT_S = 300.0
_READY = "ready"
# Plain integers (most AIME/GSM8K/arithmetic answers) are compared without math-verify,
# which gives the same verdict for them; this skips a worker round trip per pair.
_INT = re.compile(r"-?[0-9]{1,100}")  # bounded: int() refuses huge digit strings


@dataclass(frozen=True)
class Grade:
    correct: bool
    status: str  # one of STATUSES


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None if absent."""
    best = None
    for macro in ("\\boxed", "\\fbox"):
        pos = text.rfind(macro)
        if pos > (best[0] if best else -1):
            best = (pos, macro)
    if best is None:
        return None
    i = best[0] + len(best[1])
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, start = 0, i + 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                content = text[start:j].strip()
                return content or None
    return None  # unbalanced: the answer was cut off


def _norm(s: str) -> str:
    """The form an answer is compared in: surrounding whitespace never changes a verdict
    (both sides are wrapped in \\boxed{}), so " 1/2" and "1/2 " share one cache entry."""
    return s.strip()


def _int_pair(a: str, b: str) -> tuple[int, int] | None:
    a, b = a.strip(), b.strip()
    if _INT.fullmatch(a) and _INT.fullmatch(b):
        return int(a), int(b)
    return None


# ----------------------------------------------------------------------------- worker side

@functools.lru_cache(maxsize=8192)  # a gold is parsed once, not once per distinct answer
def _parse(text: str, *, boxed: bool):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    src = f"\\boxed{{{text}}}" if boxed else text
    return parse(src, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=None)


def _do(kind: str, a: str, b: str | None):
    """One unit of work, in a worker process. Returns a picklable result."""
    from math_verify import verify

    if kind == "extract":
        parsed = _parse(a, boxed=False)
        return str(parsed[-1]) if parsed else None
    if kind == "grade":
        gold, pred = _parse(a, boxed=True), _parse(b, boxed=True)
        if not gold:
            raise ValueError(f"gold answer {a!r} does not parse")
        if not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=None))
    if kind == "equiv":
        x, y = _parse(a, boxed=True), _parse(b, boxed=True)
        return bool(x and y and verify(x, y, timeout_seconds=None))
    raise ValueError(f"unknown task kind {kind}")


def _worker_main(conn) -> None:
    import logging as _logging

    _logging.disable(_logging.WARNING)  # math-verify warns on every unparsable string
    import math_verify  # noqa: F401 (loaded before the parent starts the clock)

    conn.send(_READY)
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        for key, kind, a, b in batch:
            try:
                conn.send((key, "ok", _do(kind, a, b)))
            except Exception as exc:  # a bad input is a result, not a crash
                conn.send((key, "error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        with _main_module_hidden():
            self.proc.start()
        child.close()
        self.pending: deque = deque()
        self.deadline = float("inf")
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the worker has started (the fork server's first start imports
        math-verify; a loaded machine is slow to fork): start-up must not count against
        the first item's time limit."""
        if self.ready:
            return
        if not self.conn.poll(_START_LIMIT_S):
            self.kill()
            raise RuntimeError(f"a math-verify worker did not start within {_START_LIMIT_S}s")
        if self.conn.recv() != _READY:
            raise RuntimeError("a math-verify worker sent a result before its ready signal")
        self.ready = True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


# ----------------------------------------------------------------------------- parent side

@contextlib.contextmanager
def _main_module_hidden():
    """Start a worker without the parent's main module. multiprocessing imports it again
    in the fork server (and in spawn children), for functions pickled from it; the
    worker's code is all in this module, and that import costs seconds when the main
    module imports vLLM, torch or a trainer (a Snakemake script, OpenRLHF's Ray worker)
    and runs whatever top-level code it has. Without a spec or a file it is skipped."""
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


def _worker_context():
    """Workers fork from multiprocessing's fork server, a fresh single-threaded process
    (so safe beside torch/vLLM threads, like spawn) that imports math-verify once:
    each worker then starts in milliseconds with math-verify loaded. Falls back to
    spawn where there is no fork server (Windows)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["math_verify", __name__])
    return ctx


class Grader:
    """A pool of math-verify workers with a hard per-item timeout and a result cache.

    Use as a context manager (or call close()). Not thread-safe.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0):
        self.n_workers = max(1, workers)
        self.timeout_s = timeout_s
        self._ctx = _worker_context()
        self._workers: list[_Worker] = []
        self._cache: dict[tuple, object] = {}
        self.stats = {"computed": 0, "cache_hits": 0, "timeouts": 0, "errors": 0}

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []

    def _run(self, tasks: list[tuple[str, str, str | None]], progress: str | None = None) -> dict:
        """Compute the uncached tasks; returns {task: (status, value)} for all of them."""
        # Grouped by gold (a task's first string), so one worker parses a gold once.
        todo = deque(sorted((t for t in dict.fromkeys(tasks) if t not in self._cache),
                            key=lambda t: t[1]))
        self.stats["cache_hits"] += len(tasks) - len(todo)
        # Batches small enough that every worker gets several (balanced ends), never
        # above _CHUNK (a kill at a time limit re-queues the rest of a batch).
        chunk = max(1, min(_CHUNK, len(todo) // (4 * self.n_workers)))
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=progress, unit="item", mininterval=2)
        while len(self._workers) < min(self.n_workers, len(todo)):
            self._workers.append(_Worker(self._ctx))
        for w in self._workers:  # started side by side above, waited for here
            w.wait_ready()
        busy: dict = {}
        while todo or busy:
            for w in self._workers:  # feed idle workers
                if w.conn not in busy and todo:
                    batch = [todo.popleft() for _ in range(min(chunk, len(todo)))]
                    w.pending.extend(batch)
                    w.conn.send([(t, *t) for t in batch])
                    w.deadline = time.monotonic() + self.timeout_s
                    busy[w.conn] = w
            if not busy:
                break
            now = time.monotonic()
            ready = wait(list(busy), timeout=max(0.0, min(w.deadline for w in busy.values()) - now))
            for conn in ready:
                w = busy[conn]
                try:
                    key, status, value = conn.recv()
                except (EOFError, OSError):  # the worker died (e.g. out of memory)
                    self._fail_head(w, "error", "worker process died")
                    self._replace(w, busy)
                    continue
                w.pending.remove(key)
                self._store(key, status, value)
                if bar:
                    bar.update()
                w.deadline = time.monotonic() + self.timeout_s
                if not w.pending:
                    del busy[conn]
            now = time.monotonic()
            for w in [w for w in busy.values() if w.deadline <= now]:
                self._fail_head(w, "timeout", None)
                if bar:
                    bar.update()
                todo.extendleft(reversed(w.pending))  # the rest of its batch goes back
                w.pending.clear()
                self._replace(w, busy)
        if bar:
            bar.close()
        return {t: self._cache[t] for t in tasks}

    def _fail_head(self, w: _Worker, status: str, value) -> None:
        key = w.pending.popleft()
        self._store(key, status, value)
        if status == "timeout":
            log.warning("math-verify timed out after %.1fs on %r", self.timeout_s, key[1:])

    def _replace(self, w: _Worker, busy: dict) -> None:
        busy.pop(w.conn, None)
        w.kill()
        new = _Worker(self._ctx)
        new.wait_ready()
        self._workers[self._workers.index(w)] = new

    def _store(self, key, status: str, value) -> None:
        self._cache[key] = (status, value)
        self.stats["computed"] += 1
        if status == "timeout":
            self.stats["timeouts"] += 1
        elif status == "error":
            self.stats["errors"] += 1

    # -- public API --------------------------------------------------------------------

    def extract(self, texts: Sequence[str], progress: str | None = None) -> list[str | None]:
        """extract_answer for many texts: the boxed answer, else math-verify's extraction."""
        out: list[str | None] = [last_boxed(t) for t in texts]
        tasks = [("extract", t, None) for t, a in zip(texts, out) if a is None and t.strip()]
        results = self._run(tasks, progress)
        it = iter(tasks)
        for i, (t, a) in enumerate(zip(texts, out)):
            if a is None and t.strip():
                status, value = results[next(it)]
                out[i] = value if status == "ok" else None
        return out

    def grade(self, items: Sequence[tuple[str, str | None]],
              progress: str | None = None) -> list[Grade]:
        """Grade (gold, answer) pairs. No answer: no_answer; timeout/error: not correct."""
        tasks = [("grade", _norm(g), _norm(a)) for g, a in items
                 if a is not None and not _int_pair(g, a)]
        results = self._run(tasks, progress)
        grades = []
        for gold, ans in items:
            if ans is None:
                grades.append(Grade(False, "no_answer"))
                continue
            ints = _int_pair(gold, ans)
            if ints:
                grades.append(Grade(ints[0] == ints[1], "ok"))
                continue
            status, value = results[("grade", _norm(gold), _norm(ans))]
            grades.append(Grade(bool(value) if status == "ok" else False, status))
        return grades

    def equivalent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Whether two answers are the same mathematical object (a timeout counts as not)."""
        tasks = [("equiv", _norm(a), _norm(b)) for a, b in pairs
                 if a != b and not _int_pair(a, b)]
        results = self._run(tasks)
        out = []
        for a, b in pairs:
            ints = _int_pair(a, b)
            if a == b or ints:
                out.append(a == b or ints[0] == ints[1])
            else:
                status, value = results[("equiv", _norm(a), _norm(b))]
                out.append(status == "ok" and bool(value))
        return out


def extract_answer(text: str, timeout_s: float = 5.0) -> str | None:
    """The last \\boxed{} content, else math-verify's extraction, else None."""
    boxed = last_boxed(text)
    if boxed is not None or not text.strip():
        return boxed
    with Grader(workers=1, timeout_s=timeout_s) as g:
        return g.extract([text])[0]


def verify_one(gold: str, answer: str | None, timeout_s: float = 5.0) -> Grade:
    """Grade one answer in a fresh worker with a hard timeout. Never raises."""
    if answer is None:
        return Grade(False, "no_answer")
    try:
        with Grader(workers=1, timeout_s=timeout_s) as g:
            return g.grade([(gold, answer)])[0]
    except Exception as exc:  # noqa: BLE001 (callers such as the reward must not see one)
        log.warning("grading failed: %s", exc)
        return Grade(False, "error")


def cluster_answers(answers: Sequence[str | None], grader: Grader) -> np.ndarray:
    """Group answers by mathematical equivalence: int32 cluster ids in order of first
    appearance, -1 for no answer. Identical strings never need math-verify; each new
    distinct string is compared with one representative of every cluster so far."""
    ids = np.full(len(answers), -1, dtype=np.int32)
    reps: list[str] = []
    of_string: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        if a not in of_string:
            same = grader.equivalent([(r, a) for r in reps]) if reps else []
            of_string[a] = next((c for c, eq in enumerate(same) if eq), len(reps))
            if of_string[a] == len(reps):
                reps.append(a)
        ids[i] = of_string[a]
    return ids
