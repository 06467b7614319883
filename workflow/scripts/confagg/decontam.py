"""Decontamination: training problems that overlap a benchmark problem are dropped.

Two checks, both against every problem of every benchmark:
- the same problem after normalization (Unicode NFKC, lower case, runs of letters or
  digits and single symbols as tokens, so spacing and case do not matter but
  "1 + 9" and "1 - 9" differ);
- a shared word n-gram (default 8 words of letters and digits, punctuation dropped),
  the rule of open-r1's decontamination: a long shared phrase is a copied problem
  far more often than chance.

Benchmark n-grams go into one hash table, so each training problem costs one lookup
per n-gram (linear in the data, no pairwise comparison of problems).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)
_WORD = re.compile(r"\S+")


def normalize(text: str) -> str:
    """A problem's comparable form: tokens (words and symbols) joined by one space."""
    return " ".join(_TOKEN.findall(unicodedata.normalize("NFKC", text).lower()))


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]


class BenchmarkIndex:
    """Every benchmark problem's normalized text and word n-grams, for lookups."""

    def __init__(self, n: int = 8):
        if n < 1:
            raise ValueError(f"n-gram size must be at least 1, got {n}")
        self.n = n
        self.exact: dict[str, tuple[str, str]] = {}
        self.grams: dict[tuple[str, ...], tuple[str, str]] = {}  # n-gram -> first owner
        self.sizes: dict[str, int] = {}

    def add(self, benchmark: str, rows: Iterable[dict]) -> None:
        count = 0
        for r in rows:
            owner = (benchmark, str(r["id"]))
            self.exact.setdefault(normalize(r["problem"]), owner)
            for g in ngrams(r["problem"], self.n):
                self.grams.setdefault(g, owner)
            count += 1
        self.sizes[benchmark] = self.sizes.get(benchmark, 0) + count

    def match(self, problem: str) -> dict[str, Any] | None:
        """Why `problem` overlaps a benchmark (the first reason found), or None."""
        owner = self.exact.get(normalize(problem))
        if owner:
            return {"reason": "same text", "benchmark": owner[0], "benchmark_id": owner[1]}
        for g in ngrams(problem, self.n):
            owner = self.grams.get(g)
            if owner:
                return {"reason": f"shared {self.n}-gram", "benchmark": owner[0],
                        "benchmark_id": owner[1], "ngram": " ".join(g)}
        return None


def decontaminate(train_rows: Iterable[dict], benchmarks: dict[str, Iterable[dict]],
                  n: int = 8) -> dict[str, Any]:
    """The training problems to drop, with the benchmark problem each overlaps."""
    index = BenchmarkIndex(n)
    for name, rows in benchmarks.items():
        index.add(name, rows)
    dropped, total = [], 0
    for r in train_rows:
        total += 1
        hit = index.match(r["problem"])
        if hit:
            dropped.append({"id": str(r["id"]), "problem": r["problem"], **hit})
    return {"ngram": n, "benchmarks": dict(index.sizes), "train_problems": total,
            "dropped": dropped, "kept": total - len(dropped)}


def report_markdown(rep: dict[str, Any], train_name: str) -> str:
    bench = ", ".join(f"{b} ({k} problems)" for b, k in rep["benchmarks"].items())
    lines = ["# Decontamination", "",
             f"{rep['train_problems']} problems of `{train_name}` compared with every "
             f"problem of {bench or 'no benchmark'}: the same normalized text, or a shared "
             f"{rep['ngram']}-word sequence. {len(rep['dropped'])} dropped, {rep['kept']} "
             f"kept for curation.", ""]
    if rep["dropped"]:
        lines += ["| training problem | reason | benchmark | benchmark problem | shared words |",
                  "|---|---|---|---|---|"]
        for d in rep["dropped"]:
            lines.append(f"| {d['id']} | {d['reason']} | {d['benchmark']} | "
                         f"{d['benchmark_id']} | {d.get('ngram', '')} |")
    return "\n".join(lines) + "\n"
