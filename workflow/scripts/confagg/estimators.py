"""Stage 4's model-free methods, estimated at every sample budget m.

For one problem with a pool of N samples (answer cluster, correctness, confidence,
tokens), a method's accuracy at budget m is its expected accuracy over random
subsets of m samples, estimated with `n_draws` seeded subsets (drawn at once as an
(n_draws, m) index matrix; every method is vectorized over that matrix). When there
are no more than `n_draws` subsets of size m, all of them are used and the estimate
is exact.

Methods:
- `single`: one sample (pass@1, the pool's accuracy; the same at every m);
- `majority`: the answer cluster with the most votes (answers grouped by math-verify
  equivalence upstream, so "1/2" and "0.5" vote together);
- `weighted`: each sample votes with its confidence (DeepConf);
- `filtered10` / `filtered90`: DeepConf's offline rule (confagg.voting.filtered_vote):
  of the samples with an answer, keep those at or above the 90th / 10th percentile of
  their confidences, then the weighted vote among them;
- `best_conf`: the answer of the most confident sample that has an answer;
- `oracle`: right when any of the m samples is right (the ceiling of any selector).

Conventions: a cluster is a set of equivalent answers with one verdict. Equivalence
(each answer compared with one representative) can disagree with grading against
the gold ("10\\%", "10" and "0.1" can form one cluster graded right, right, wrong),
so a cluster whose members' verdicts differ is split in two (grade_samples writes them
split; a pool built here is split the same way, by confagg.grading.split_by_verdict);
then no method can be right on a subset where the oracle is not. A tie (equal vote
totals, or equally confident samples for `best_conf`) scores its expected accuracy
under a uniform random choice among the tied answers; samples tied at a filter's threshold are all
kept. Every score of a subset is thus a function of the subset as a set, and a pool
is put in a canonical order (clusters and samples sorted by their contents) before
subsets are drawn, so no estimate depends on the order of the samples. Samples
without an answer never win; a subset without any answer scores 0. A non-finite
confidence (a trace without tokens) counts as 0, the least confident. The benchmark
accuracy is the mean over problems; 95% intervals come from a percentile bootstrap
over problems (the same resampled problems for every method at a budget). An
aggregator is compared with majority voting at the largest budget on the same
problems by a paired bootstrap of the per-problem difference (`paired_difference`).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .grading import split_by_verdict
from .voting import filter_percentile

log = logging.getLogger(__name__)

MODEL_FREE = ("single", "majority", "weighted", "filtered10", "filtered90", "best_conf", "oracle")
FILTER_FRACTIONS = {"filtered10": 0.1, "filtered90": 0.9}
# The method every aggregator is compared with, at the largest budget.
REFERENCE_METHOD = "majority"


def _canonical(cluster: np.ndarray, correct: np.ndarray, conf: np.ndarray,
               tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, labels): clusters split by verdict and numbered by their contents (verdict,
    then the sorted (confidence, tokens) of their members), samples sorted by (label,
    confidence, tokens). Reordering a pool or renaming its clusters gives the same
    arrays: clusters with equal contents are interchangeable, and so are equal samples."""
    cluster = split_by_verdict(cluster, correct)
    members: dict[int, list[int]] = defaultdict(list)
    for i in np.flatnonzero(cluster >= 0).tolist():
        members[int(cluster[i])].append(i)
    content = {key: (bool(correct[idx[0]]), sorted(zip(conf[idx].tolist(), tokens[idx].tolist())))
               for key, idx in members.items()}
    label = np.full(cluster.size, -1, dtype=np.int64)
    for new, key in enumerate(sorted(members, key=content.__getitem__)):
        label[members[key]] = new
    order = np.lexsort((tokens, conf, label))
    return order, label[order]


@dataclass
class ProblemPool:
    """One problem's samples: cluster id (-1 = no answer), correctness, confidence, tokens.

    Stored in canonical order with verdict-pure cluster ids (see the module docstring),
    so `cluster` need not equal the ids passed in, nor the order of the samples."""

    cluster: np.ndarray
    correct: np.ndarray
    conf: np.ndarray
    tokens: np.ndarray

    def __post_init__(self):
        cluster = np.asarray(self.cluster, dtype=np.int64)
        correct = np.asarray(self.correct, dtype=bool)
        conf = np.asarray(self.conf, dtype=np.float64)
        conf = np.where(np.isfinite(conf), conf, 0.0)
        tokens = np.asarray(self.tokens, dtype=np.float64)
        arrays = (cluster, correct, conf, tokens)
        if len({a.shape for a in arrays}) != 1 or cluster.ndim != 1:
            raise ValueError(f"a problem pool needs four 1-D arrays of one length, got shapes "
                             f"{[a.shape for a in arrays]}")
        if cluster.size == 0:
            raise ValueError("a problem pool needs at least one sample")
        bad = np.flatnonzero(correct & (cluster < 0))
        if bad.size:
            raise ValueError(f"sample {int(bad[0])} of the pool is marked correct but has no "
                             f"answer (cluster -1)")
        order, self.cluster = _canonical(cluster, correct, conf, tokens)
        self.correct, self.conf, self.tokens = correct[order], conf[order], tokens[order]

    @property
    def size(self) -> int:
        return int(self.cluster.size)

    def cluster_correct(self) -> np.ndarray:
        """(C,) whether each cluster id 0..C-1 is right (all its members agree)."""
        n_clusters = int(self.cluster.max()) + 1
        right = np.zeros(max(n_clusters, 0), dtype=bool)
        answered = self.cluster >= 0
        right[self.cluster[answered]] = self.correct[answered]
        return right


def budgets_up_to(n: int) -> list[int]:
    """1, 2, 4, ... below n, and n itself."""
    out, m = [], 1
    while m < n:
        out.append(m)
        m *= 2
    return out + [n]


def draw_subsets(n: int, m: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """(R, m) rows of m distinct samples of range(n): every subset when there are at most
    n_draws of them (the estimate is then exact), else n_draws uniform random ones."""
    if not 1 <= m <= n:
        raise ValueError(f"budget m={m} must be between 1 and the pool size {n}")
    if math.comb(n, m) <= n_draws:
        return np.array(list(combinations(range(n), m)), dtype=np.int64).reshape(-1, m)
    # A random permutation per row (argsort of uniforms), cut to its first m entries.
    return np.argsort(rng.random((n_draws, n)), axis=1)[:, :m]


def vote_accuracy(clusters: np.ndarray, weights: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Expected accuracy per row of a vote of `clusters` (R, m) with `weights` (R, m), where
    right[c] says whether cluster c is right; ties split uniformly, -1 never votes."""
    n_clusters = right.size
    if n_clusters == 0:
        return np.zeros(clusters.shape[0])
    onehot = clusters[..., None] == np.arange(n_clusters)            # (R, m, C); -1 matches none
    scores = (onehot * weights[..., None]).sum(axis=1)                # (R, C)
    answered = onehot.any(axis=1)
    scores = np.where(answered, scores, -np.inf)
    best = scores.max(axis=1, keepdims=True)
    # Counts are exact; confidence sums get a relative tolerance for float round-off.
    tied = answered & (scores >= best - 1e-9 * np.maximum(1.0, np.abs(best)))
    n_tied = tied.sum(axis=1)
    acc = (tied & right[None, :]).sum(axis=1) / np.maximum(n_tied, 1)
    return np.where(n_tied > 0, acc, 0.0)


def percentile_of_sorted(ascending: np.ndarray, k: np.ndarray, q: float) -> np.ndarray:
    """np.percentile(row[:k], q) of every row of `ascending` (rows sorted ascending, the
    first k[r] entries valid, k >= 1) in one vectorized pass, with numpy's own arithmetic
    for its default (linear) method: virtual index (k - 1) * (q / 100), and its two-sided
    interpolation. Equal to np.percentile bit for bit (tested), without a call per k."""
    k = np.asarray(k, dtype=np.int64)
    virtual = (k - 1) * (q / 100)
    last = virtual >= k - 1
    below = np.where(last, k - 1, np.floor(virtual)).astype(np.int64)
    above = np.where(last, k - 1, below + 1)
    gamma = virtual - np.where(last, -1, below)
    rows = np.arange(ascending.shape[0])
    a, b = ascending[rows, below], ascending[rows, above]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def filter_keep_rows(conf: np.ndarray, answered: np.ndarray, keep_frac: float) -> np.ndarray:
    """(R, m) which samples DeepConf's filter keeps in each row: answered, and at least the
    filter_percentile(keep_frac) percentile of the row's answered confidences (as
    confagg.voting.filter_keep computes it for one row)."""
    n_answered = answered.sum(axis=1)
    ascending = np.sort(np.where(answered, conf, np.inf), axis=1)  # answered ones first
    ascending[n_answered == 0] = 0.0  # no threshold to compute (inf - inf); keeps nothing
    threshold = percentile_of_sorted(ascending, np.maximum(n_answered, 1),
                                     filter_percentile(keep_frac))
    return answered & (conf >= threshold[:, None])


def method_accuracy(method: str, pool: ProblemPool, idx: np.ndarray) -> np.ndarray:
    """Accuracy per row (R,) of `method` on the subsets `idx` (R, m) of `pool`; each row's
    value depends on its set of samples only, not on their order in the row."""
    cl, conf, cor = pool.cluster[idx], pool.conf[idx], pool.correct[idx]
    if method == "single":  # pass@1 is the pool's accuracy, whatever the budget
        return np.full(idx.shape[0], pool.correct.mean())
    if method == "oracle":
        return cor.any(axis=1).astype(float)
    if method == "best_conf":
        answered_conf = np.where(cl >= 0, conf, -np.inf)
        tied = (cl >= 0) & (answered_conf == answered_conf.max(axis=1, keepdims=True))
        return (tied & cor).sum(axis=1) / np.maximum(tied.sum(axis=1), 1)
    right = pool.cluster_correct()
    if method == "majority":
        return vote_accuracy(cl, np.ones_like(conf), right)
    if method == "weighted":
        return vote_accuracy(cl, conf, right)
    if method in FILTER_FRACTIONS:
        keep = filter_keep_rows(conf, cl >= 0, FILTER_FRACTIONS[method])
        return vote_accuracy(np.where(keep, cl, -1), conf, right)
    raise ValueError(f"unknown method '{method}' (known: {', '.join(MODEL_FREE)})")


def bootstrap_ci(per_problem: np.ndarray, n_boot: int, rng: np.random.Generator,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over problems, resampling problems."""
    x = np.asarray(per_problem, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def problem_rng(seed: int, m: int, problem_id: str) -> np.random.Generator:
    """The draws of one problem at one budget, independent of which other problems exist."""
    return np.random.default_rng([seed, m, zlib.crc32(problem_id.encode())])


def evaluate_pools(pools: dict[str, ProblemPool], *, n_draws: int, n_boot: int, seed: int,
                   methods=MODEL_FREE, per_problem: dict | None = None) -> list[dict]:
    """Rows {method, budget, accuracy, ci_low, ci_high, mean_tokens, n_problems} for every
    method at every budget 1, 2, 4, ..., N (N = the smallest pool). A dict passed as
    `per_problem` receives {(method, budget): {problem: accuracy}}."""
    if not pools:
        raise ValueError("no problems to evaluate")
    sizes = sorted({p.size for p in pools.values()})
    n = sizes[0]
    if len(sizes) > 1:
        log.warning("pools of %s samples: budgets stop at the smallest, %d", sizes, n)
    ids = sorted(pools)
    pass1_tokens = float(np.mean([pools[pid].tokens.mean() for pid in ids]))
    rows = []
    for m in budgets_up_to(n):
        acc = {meth: np.empty(len(ids)) for meth in methods}
        tokens = np.empty(len(ids))
        for i, pid in enumerate(ids):
            pool = pools[pid]
            idx = draw_subsets(pool.size, m, n_draws, problem_rng(seed, m, pid))
            tokens[i] = pool.tokens[idx].sum(axis=1).mean()
            for meth in methods:
                acc[meth][i] = method_accuracy(meth, pool, idx).mean()
        for meth in methods:
            lo, hi = bootstrap_ci(acc[meth], n_boot, np.random.default_rng([seed, m]))
            # Every method but `single` reads all m samples, so it pays for all m.
            rows.append({"method": meth, "budget": m, "accuracy": float(acc[meth].mean()),
                         "ci_low": lo, "ci_high": hi,
                         "mean_tokens": pass1_tokens if meth == "single" else float(tokens.mean()),
                         "n_problems": len(ids)})
            if per_problem is not None:
                per_problem[(meth, m)] = dict(zip(ids, acc[meth].tolist()))
    return rows


def paired_difference(acc: dict[str, float], ref: dict[str, float], n_boot: int,
                      rng: np.random.Generator, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of acc[p] - ref[p] over the problems p of `acc`, with a paired
    percentile bootstrap interval: a resample draws problems, each with both its values."""
    extra = sorted(acc.keys() - ref.keys())
    if extra:
        raise ValueError(f"{len(extra)} problem(s) have no reference value to pair with, "
                         f"e.g. {extra[:3]}")
    ids = sorted(acc)
    d = np.array([acc[p] - ref[p] for p in ids], dtype=np.float64)
    lo, hi = bootstrap_ci(d, n_boot, rng, level)
    return (float(d.mean()) if d.size else math.nan), lo, hi


def aggregator_rows(per_problem: dict[int, dict[str, list[float]]],
                    tokens: dict[int, list[float]], method: str, *, n_boot: int,
                    seed: int, reference: tuple[str, dict[str, float]] | None = None
                    ) -> list[dict]:
    """Rows for an aggregator method: per_problem[m][problem] holds the correctness of each
    aggregation at budget m, tokens[m] the solver plus aggregator tokens of each. With
    `reference` = (name, {problem: accuracy}), e.g. ("majority@8", ...), each row also
    holds diff_ref, diff, diff_low and diff_high: the paired difference on the same
    problems (paired_difference)."""
    rows = []
    for m in sorted(per_problem):
        by_problem = {pid: float(np.mean(v)) for pid, v in per_problem[m].items()}
        acc = np.array([by_problem[pid] for pid in sorted(by_problem)])
        lo, hi = bootstrap_ci(acc, n_boot, np.random.default_rng([seed, m]))
        row = {"method": method, "budget": m, "accuracy": float(acc.mean()),
               "ci_low": lo, "ci_high": hi, "mean_tokens": float(np.mean(tokens[m])),
               "n_problems": len(acc)}
        if reference is not None:
            name, ref = reference
            diff, dlo, dhi = paired_difference(by_problem, ref, n_boot,
                                               np.random.default_rng([seed, m]))
            row.update(diff_ref=name, diff=diff, diff_low=dlo, diff_high=dhi)
        rows.append(row)
    return rows


def reference_accuracy(per_problem: dict) -> tuple[str, dict[str, float]]:
    """(name, {problem: accuracy}) of REFERENCE_METHOD at its largest budget, from the
    per_problem dict that evaluate_pools filled: what aggregators are compared with."""
    budgets = [m for meth, m in per_problem if meth == REFERENCE_METHOD]
    if not budgets:
        raise ValueError(f"{REFERENCE_METHOD} was not evaluated: nothing to compare with")
    top = max(budgets)
    return f"{REFERENCE_METHOD}@{top}", per_problem[(REFERENCE_METHOD, top)]


def aggregator_differences(by_method: dict[str, dict[int, dict[str, float]]], comparisons,
                           *, n_boot: int, seed: int) -> list[dict]:
    """Rows {method, baseline, question, budget, n_problems, diff, diff_low, diff_high}:
    for each (method, baseline, question) of `comparisons` whose two methods are in
    `by_method` ({method: {m: {problem: accuracy}}}), at each m both have, the paired
    difference method - baseline on the same problems (paired_difference). The aggregators
    answer the same seeded candidate sets, so the pairs share problems and sets."""
    rows = []
    for method, baseline, question in comparisons:
        if method not in by_method or baseline not in by_method:
            continue
        a, b = by_method[method], by_method[baseline]
        for m in sorted(a.keys() & b.keys()):
            if a[m].keys() != b[m].keys():
                raise ValueError(
                    f"{method} and {baseline} at m={m}: problems differ (only in {method}: "
                    f"{sorted(a[m].keys() - b[m].keys())[:3]}, only in {baseline}: "
                    f"{sorted(b[m].keys() - a[m].keys())[:3]})")
            diff, lo, hi = paired_difference(a[m], b[m], n_boot, np.random.default_rng([seed, m]))
            rows.append({"method": method, "baseline": baseline, "question": question,
                         "budget": m, "n_problems": len(a[m]), "diff": diff, "diff_low": lo,
                         "diff_high": hi})
    return rows
