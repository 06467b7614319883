"""Single votes over answer clusters (integer ids per sample; -1 = no answer, never wins).

Clusters come from Stage 1 (`cluster` column: math-verify equivalence within a
problem), so `1/2`, `0.5` and `\\frac{1}{2}` are one vote. These functions return one
winner (curation labels a set by it), so a tie goes to the tied cluster that appears
first among the voters. Stage 4's estimators score a tie by its expected accuracy
instead and never depend on sample order; see confagg.estimators.

The filtered vote follows DeepConf's offline reference (facebookresearch/deepconf,
`deepconf/utils.py`: `compute_all_voting_results`, `filter_top_confidence`): traces
without an answer are dropped first; of the rest, a trace is kept when its confidence
is at least numpy's (linear) percentile `(1 - keep_frac) * 100` of their confidences,
so every trace tied at the threshold is kept; the kept traces then vote, each weighted
by that same confidence.
"""

from __future__ import annotations

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


def filter_percentile(keep_frac: float) -> float:
    """The percentile at which the filter cuts, computed as the reference does
    (`(1 - 0.9) * 100` is 9.999999999999998 in floating point, and stays so)."""
    if not 0 < keep_frac <= 1:
        raise ValueError(f"keep_frac must be in (0, 1], got {keep_frac}")
    return (1 - keep_frac) * 100


def filter_keep(conf: Sequence[float], keep_frac: float) -> np.ndarray:
    """Which of these (answered) traces DeepConf's filter keeps: confidence at least the
    filter_percentile(keep_frac) percentile of them (numpy's linear interpolation)."""
    conf = np.asarray(conf, dtype=np.float64)
    if conf.size == 0:
        return np.zeros(0, dtype=bool)
    return conf >= np.percentile(conf, filter_percentile(keep_frac))


def filtered_vote(clusters: Sequence[int], conf: Sequence[float], keep_frac: float) -> int:
    """DeepConf filtered vote: among the traces with an answer, keep those filter_keep
    selects, then the weighted vote among them; -1 when no trace has an answer."""
    clusters = np.asarray(clusters, dtype=np.int64)
    conf = np.asarray(conf, dtype=np.float64)
    answered = np.flatnonzero(clusters >= 0)
    kept = answered[filter_keep(conf[answered], keep_frac)]
    return weighted_vote(clusters[kept], conf[kept])
