"""Votes over answer clusters (integer ids per sample; -1 = no answer, never wins).

Clusters come from Stage 1 (`cluster` column: math-verify equivalence within a
problem), so `1/2`, `0.5` and `\\frac{1}{2}` are one vote. Ties go to the tied
cluster that appears first among the voters: deterministic, and for a random
sample order the same as a uniform random choice. (Stage 4's estimators instead
score a tie by its expected accuracy; see confagg.estimators.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def vote_counts(clusters: Sequence[int], weights: Sequence[float] | None = None) -> dict[int, float]:
    """Total vote per answered cluster, in order of first appearance."""
    counts: dict[int, float] = {}
    for i, c in enumerate(clusters):
        c = int(c)
        if c < 0:
            continue
        counts[c] = counts.get(c, 0.0) + (1.0 if weights is None else float(weights[i]))
    return counts


def _winner(counts: dict[int, float]) -> int:
    if not counts:
        return -1
    best = max(counts.values())
    return next(c for c, v in counts.items() if v == best)  # first appearance wins a tie


def majority_vote(clusters: Sequence[int]) -> int:
    """The most frequent answer cluster; -1 when no sample has an answer."""
    return _winner(vote_counts(clusters))


def weighted_vote(clusters: Sequence[int], conf: Sequence[float]) -> int:
    """DeepConf weighted vote: each answer's score is the sum of its traces' confidences."""
    return _winner(vote_counts(clusters, conf))


def filter_keep_count(keep_frac: float, n: int) -> int:
    """How many of n traces a filtered vote keeps: ceil(keep_frac * n), at least 1. The
    tolerance stops float error from rounding up an exact product (0.07 * 100 is
    7.000000000000001, which is 7 traces, not 8)."""
    return max(1, math.ceil(keep_frac * n - 1e-9))


def filtered_vote(clusters: Sequence[int], conf: Sequence[float], keep_frac: float) -> int:
    """DeepConf filtered vote: keep the filter_keep_count(keep_frac, n) most confident
    traces, then weighted vote among them."""
    clusters = np.asarray(clusters)
    conf = np.asarray(conf, dtype=np.float64)
    if clusters.size == 0:
        return -1
    keep = filter_keep_count(keep_frac, clusters.size)
    # stable sort on -conf keeps the original order among equal confidences
    top = np.sort(np.argsort(-conf, kind="stable")[:keep])
    return weighted_vote(clusters[top], conf[top])
