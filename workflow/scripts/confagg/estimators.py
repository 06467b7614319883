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
- `filtered10` / `filtered90`: keep the ceil(10% / 90% of m) most confident samples
  (answered or not, as DeepConf filters traces), then the weighted vote;
- `best_conf`: the answer of the most confident sample that has an answer;
- `oracle`: right when any of the m samples is right (the ceiling of any selector).

Conventions: a tie in a vote scores its expected accuracy under a uniform random
choice among the tied answers (the share of tied clusters that are right), which is
unbiased where a fixed tie-break (first seen, as in `confagg.voting`) would depend on
sample order. Samples without an answer never win; a subset without any answer
scores 0. A non-finite confidence (a trace without tokens) counts as 0, the least
confident. The benchmark accuracy is the mean over problems; 95% intervals come from
a percentile bootstrap over problems (the same resampled problems for every method
at a budget, so methods are compared on equal footing).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .voting import filter_keep_count

log = logging.getLogger(__name__)

MODEL_FREE = ("single", "majority", "weighted", "filtered10", "filtered90", "best_conf", "oracle")
FILTER_FRACTIONS = {"filtered10": 0.1, "filtered90": 0.9}


@dataclass
class ProblemPool:
    """One problem's samples: cluster id (-1 = no answer), correctness, confidence, tokens."""

    cluster: np.ndarray
    correct: np.ndarray
    conf: np.ndarray
    tokens: np.ndarray

    def __post_init__(self):
        self.cluster = np.asarray(self.cluster, dtype=np.int64)
        self.correct = np.asarray(self.correct, dtype=bool)
        conf = np.asarray(self.conf, dtype=np.float64)
        self.conf = np.where(np.isfinite(conf), conf, 0.0)
        self.tokens = np.asarray(self.tokens, dtype=np.float64)
        sizes = {a.shape for a in (self.cluster, self.correct, self.conf, self.tokens)}
        if len(sizes) != 1 or self.cluster.ndim != 1:
            raise ValueError(f"a problem pool needs four 1-D arrays of one length, got shapes "
                             f"{[a.shape for a in (self.cluster, self.correct, self.conf)]}")
        if self.cluster.size == 0:
            raise ValueError("a problem pool needs at least one sample")

    @property
    def size(self) -> int:
        return int(self.cluster.size)

    def cluster_correct(self) -> np.ndarray:
        """(C,) whether each cluster id 0..C-1 is right (most of its members graded right;
        they normally all agree, being equivalent answers)."""
        n_clusters = int(self.cluster.max()) + 1 if self.cluster.max() >= 0 else 0
        answered = self.cluster >= 0
        votes = np.bincount(self.cluster[answered], minlength=n_clusters)
        right = np.bincount(self.cluster[answered], weights=self.correct[answered],
                            minlength=n_clusters)
        return (votes > 0) & (right >= 0.5 * votes)


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


def method_accuracy(method: str, pool: ProblemPool, idx: np.ndarray) -> np.ndarray:
    """Accuracy per row (R,) of `method` on the subsets `idx` (R, m) of `pool`."""
    rows = np.arange(idx.shape[0])
    cl, conf, cor = pool.cluster[idx], pool.conf[idx], pool.correct[idx]
    if method == "single":  # pass@1 is the pool's accuracy, whatever the budget
        return np.full(idx.shape[0], pool.correct.mean())
    if method == "oracle":
        return cor.any(axis=1).astype(float)
    if method == "best_conf":
        pick = np.argmax(np.where(cl >= 0, conf, -np.inf), axis=1)
        return (cor[rows, pick] & (cl[rows, pick] >= 0)).astype(float)
    right = pool.cluster_correct()
    if method == "majority":
        return vote_accuracy(cl, np.ones_like(conf), right)
    if method == "weighted":
        return vote_accuracy(cl, conf, right)
    if method in FILTER_FRACTIONS:
        keep = filter_keep_count(FILTER_FRACTIONS[method], idx.shape[1])
        top = np.argsort(-conf, axis=1, kind="stable")[:, :keep]
        return vote_accuracy(np.take_along_axis(cl, top, 1), np.take_along_axis(conf, top, 1),
                             right)
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
                   methods=MODEL_FREE) -> list[dict]:
    """Rows {method, budget, accuracy, ci_low, ci_high, mean_tokens, n_problems} for every
    method at every budget 1, 2, 4, ..., N (N = the smallest pool)."""
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
    return rows


def aggregator_rows(per_problem: dict[int, dict[str, list[float]]],
                    tokens: dict[int, list[float]], method: str, *, n_boot: int,
                    seed: int) -> list[dict]:
    """Rows for an aggregator method: per_problem[m][problem] holds the correctness of each
    aggregation at budget m, tokens[m] the solver plus aggregator tokens of each."""
    rows = []
    for m in sorted(per_problem):
        acc = np.array([np.mean(v) for _, v in sorted(per_problem[m].items())])
        lo, hi = bootstrap_ci(acc, n_boot, np.random.default_rng([seed, m]))
        rows.append({"method": method, "budget": m, "accuracy": float(acc.mean()),
                     "ci_low": lo, "ci_high": hi, "mean_tokens": float(np.mean(tokens[m])),
                     "n_problems": len(acc)})
    return rows
