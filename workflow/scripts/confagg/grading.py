"""Answer extraction, math-verify grading and answer clustering that no input can hang.

math-verify's own timeouts use `signal.alarm`, which only works in a process's main
thread, and some inputs hang regardless (upstream issues #50, #55, #65). So every
parse and verify runs in a `WorkerPool` (confagg/workerpool.py): worker processes
with a hard per-item CPU-time limit (`timeout_s`) that die with their owner. A
timeout is reported as status "timeout", never as a wrong answer.

What keeps it fast: answers are compared as stripped strings, so copies of one
answer cost one lookup in a bounded cache; pairs of plain integers are decided in
the parent; the rest go to the workers in batches grouped by gold answer, so a
worker parses each gold once and each distinct answer once (per-worker parse cache).

Convention: the gold answer is always parsed first (`verify(gold, pred)`, which is
asymmetric), and both sides are wrapped in ``\\boxed{}`` so that bare LaTeX such as
``0,i\\sqrt{6},-i\\sqrt{6}`` is parsed as one expression.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .workerpool import WorkerPool

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_answer", "timeout", "error")
# Plain integers (most AIME/GSM8K/arithmetic answers) are compared without math-verify,
# which gives the same verdict for them; this skips a worker round trip per pair.
_INT = re.compile(r"-?[0-9]{1,100}")  # bounded: int() refuses huge digit strings
# An operation still between two numbers ("3 - 2", "10^{3}", "2 \\cdot 3"). math-verify
# evaluates it, so restating the problem's own computation would grade as right; where
# the gold is an integer (AIME, HMMT's integers, GSM8K, the builtin set) it is not an
# answer. A leading sign ("-3", "+12") has no number before it and stays an answer.
_COMPUTATION = re.compile(r"[0-9)}]\s*(?:[-+*/^\u00d7\u00f7]|\\times|\\cdot|\\div)\s*[0-9({\\]")
# Named in grade_samples' params, so Snakemake grades saved samples again when a verdict
# or a cluster can change (it cannot see into the library a script imports). Change the
# text whenever the rules change; Snakemake compares params as a set of strings.
GRADING_RULES = "grading rules 3: integer golds refuse computations; clusters split by verdict"
CACHE_SIZE = 1 << 17  # results kept across calls (least recently used go first)


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


def restates_a_computation(gold: str, answer: str) -> bool:
    return bool(_INT.fullmatch(gold.strip()) and _COMPUTATION.search(answer))


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


# ----------------------------------------------------------------------------- parent side

class Grader:
    """math-verify in a `WorkerPool` (hard per-item CPU-time limit `timeout_s`), with a
    bounded result cache. Thread-safe: concurrent calls are serialized.
    Use as a context manager (or call close())."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, cache_size: int = CACHE_SIZE):
        self.n_workers = max(1, workers)
        self.timeout_s = timeout_s
        self.pool = WorkerPool(_do, workers=self.n_workers, cpu_limit_s=timeout_s,
                               preload=("math_verify",))
        self._cache: OrderedDict[tuple, tuple[str, object]] = OrderedDict()
        self._cache_size = max(0, cache_size)
        self._lock = threading.RLock()
        self.stats = {"computed": 0, "cache_hits": 0, "timeouts": 0, "errors": 0,
                      "worker_deaths": 0, "cluster_timeouts": 0, "cluster_unresolved": 0}

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.close()

    def worker_pids(self) -> list[int]:
        return self.pool.pids()

    def _run(self, tasks: list[tuple[str, str, str | None]], progress: str | None = None) -> dict:
        """Compute the uncached tasks; returns {task: (status, value)} for all of them."""
        with self._lock:
            out, todo = {}, []
            for t in dict.fromkeys(tasks):
                if t in self._cache:
                    self._cache.move_to_end(t)
                    out[t] = self._cache[t]
                else:
                    todo.append(t)
            self.stats["cache_hits"] += len(tasks) - len(todo)
            todo.sort(key=lambda t: t[1])  # grouped by gold: a worker parses a gold once
            bar = None
            if progress and todo:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), desc=progress, unit="item", mininterval=2)
            try:
                results = self.pool.run(todo, on_result=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()
                self.stats["worker_deaths"] = self.pool.stats["worker_deaths"]
            for t, (status, value) in zip(todo, results):
                out[t] = (status, value)
                self.stats["computed"] += 1
                if status == "timeout":
                    self.stats["timeouts"] += 1
                elif status == "error":
                    self.stats["errors"] += 1
                self._cache[t] = (status, value)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return out

    # -- public API --------------------------------------------------------------------

    def extract(self, texts: Sequence[str], progress: str | None = None,
                boxed_only: bool = False) -> list[str | None]:
        """The answer of each text: its last \\boxed{} content, else (unless
        `boxed_only`) math-verify's extraction, else None."""
        out: list[str | None] = [last_boxed(t) for t in texts]
        if boxed_only:
            return out
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
        """Grade (gold, answer) pairs. No answer: no_answer; timeout/error: not correct;
        an integer gold answered by an unevaluated computation: not correct."""
        tasks = [("grade", _norm(g), _norm(a)) for g, a in items
                 if a is not None and not _int_pair(g, a) and not restates_a_computation(g, a)]
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
            if restates_a_computation(gold, ans):
                grades.append(Grade(False, "ok"))
                continue
            status, value = results[("grade", _norm(gold), _norm(ans))]
            grades.append(Grade(bool(value) if status == "ok" else False, status))
        return grades

    def equivalence(self, pairs: Sequence[tuple[str, str]]) -> list[Grade]:
        """Whether two answers are the same mathematical object, with the status of each
        comparison (a timeout is status "timeout", not a verdict)."""
        tasks = [("equiv", _norm(a), _norm(b)) for a, b in pairs
                 if a != b and not _int_pair(a, b)]
        results = self._run(tasks)
        out = []
        for a, b in pairs:
            ints = _int_pair(a, b)
            if a == b or ints:
                out.append(Grade(a == b or ints[0] == ints[1], "ok"))
            else:
                status, value = results[("equiv", _norm(a), _norm(b))]
                out.append(Grade(status == "ok" and bool(value), status))
        return out

    def equivalent(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """`equivalence` as booleans (a timeout counts as not equivalent)."""
        return [g.correct for g in self.equivalence(pairs)]


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


# ----------------------------------------------------------------------------- clustering

_DEC = re.compile(r"[-+]?(?:[0-9]{1,60}(?:\.[0-9]{0,60})?|\.[0-9]{1,60})")
_FRAC = re.compile(r"([-+]?)\\[dt]?frac\{([-+]?[0-9]{1,60})\}\{([0-9]{1,60})\}")
_SLASH = re.compile(r"([-+]?[0-9]{1,60})/([0-9]{1,60})")
_SPACE = re.compile(r"\s+(?![A-Za-z])|(?<![A-Za-z])\s+")  # keeps "\pi r" apart from "\pir"
_NOISE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[,;!]")


def cheap_key(answer: str) -> tuple:
    """A key that equal answers often share and unequal ones never do, without
    math-verify: the exact value of a plain number (integer, decimal, a/b,
    \\frac{a}{b}), else the string without insignificant spaces and sizing macros."""
    s = _NOISE.sub("", answer.strip()).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _SPACE.sub("", s)
    try:
        if _DEC.fullmatch(s):
            return ("num", Fraction(s))
        m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
        if m:
            *sign, num, den = m.groups()
            value = Fraction(int(num), int(den))
            return ("num", -value if sign and sign[0] == "-" else value)
    except (ValueError, ZeroDivisionError):
        pass
    return ("str", s)


def cluster_answers(answers: Sequence[str | None], grader: Grader, *, max_pairs: int = 2048,
                    max_timeouts: int = 4) -> np.ndarray:
    """Group answers by mathematical equivalence: int32 cluster ids in order of first
    appearance, -1 for no answer.

    Answers with one `cheap_key` (identical strings, equal plain numbers) share a
    cluster without math-verify. Each other distinct answer is compared with the
    representatives of the clusters so far, `grader.n_workers` comparisons at a time,
    until one is equivalent. The worst case is bounded: at most `max_pairs`
    comparisons and about `max_timeouts` timed-out ones per call (a timed-out round
    costs one `timeout_s` of CPU time per worker). An answer whose comparison timed
    out, or that the caps leave uncompared, gets a cluster of its own and is counted
    in `grader.stats` ("cluster_timeouts", "cluster_unresolved"); a representative
    that timed out twice is compared no more.
    """
    ids = np.full(len(answers), -1, dtype=np.int32)
    group_of: dict[tuple, int] = {}  # cheap key -> cluster id
    reps: list[str] = []  # one answer per cluster
    active: list[int] = []  # clusters whose representative is still compared
    strikes: dict[int, int] = {}
    pairs = timeouts = 0
    width = max(1, grader.n_workers)
    for i, a in enumerate(answers):
        if a is None:
            continue
        key = cheap_key(a)
        if key in group_of:
            ids[i] = group_of[key]
            continue
        found, unresolved = None, False
        candidates = list(active)
        while candidates and found is None and not unresolved:
            if pairs >= max_pairs or timeouts >= max_timeouts:
                unresolved = True
                break
            batch, candidates = candidates[:width], candidates[width:]
            batch = batch[:max_pairs - pairs]
            pairs += len(batch)
            verdicts = grader.equivalence([(reps[c], a) for c in batch])
            found = next((c for c, v in zip(batch, verdicts) if v.correct), None)
            for c, v in zip(batch, verdicts):
                if v.status == "timeout":
                    timeouts += 1
                    unresolved = found is None
                    strikes[c] = strikes.get(c, 0) + 1
                    if strikes[c] >= 2 and c in active:
                        active.remove(c)
        if found is None:
            found = len(reps)
            reps.append(a)
            if unresolved:
                grader.stats["cluster_unresolved"] += 1
            else:
                active.append(found)
        group_of[key] = found
        ids[i] = found
    grader.stats["cluster_timeouts"] += timeouts
    return ids


def split_by_verdict(clusters: Sequence[int], correct: Sequence[bool]) -> np.ndarray:
    """The clusters with each one's wrong members given a new id where it also has right
    ones. Equivalence is decided against a cluster's first answer and grading against
    the gold, so they can disagree ("10\\%" joins "10" and "0.1" for the gold 10; "1" and
    the restated "3 - 2" for the gold 1): no vote may count a wrong answer as right."""
    out = np.array(clusters, dtype=np.int64)  # any ids a caller uses, never narrowed
    correct = np.asarray(correct, dtype=bool)
    new = int(out.max(initial=-1)) + 1
    for c in np.unique(out[out >= 0]).tolist():
        members = out == c
        if correct[members].any() and not correct[members].all():
            out[members & ~correct] = new
            new += 1
    return out
