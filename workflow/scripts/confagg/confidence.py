"""DeepConf confidence (arXiv 2508.15260) from the solver's token log-probabilities.

Token confidence: C_i = -(1/k) * sum of the top-k log-probs at position i (k = the
`logprobs` setting, 20). Convention here: only the k highest-ranked entries count;
the sampled token, which vLLM adds to a position's entries when it falls outside
the top k, is left out (the paper's patch does the same; the reference code keeps it).
A peaked distribution gives very negative log-probs to the runners-up, so a higher
C means a more confident step.

Trace statistics over C (all vectorized with cumulative sums):
- conf_mean: mean of C;
- group confidence: means of C over sliding windows of `window` tokens (stride 1);
  a trace shorter than the window is one window of its whole length;
- conf_lowest_group: the lowest group confidence;
- conf_bottom10: mean of the lowest `bottom_frac` (10%) of group confidences;
- conf_tail: mean of C over the last `window` tokens.
"""

from __future__ import annotations

import math

import numpy as np

STAT_NAMES = ("conf_mean", "conf_tail", "conf_bottom10", "conf_lowest_group")
_FLOOR = -1e4  # a -inf log-prob (impossible token) would make the mean -inf


def token_confidence(topk_logprobs: np.ndarray) -> np.ndarray:
    """(T, k) top-k log-probs -> (T,) token confidence."""
    lp = np.asarray(topk_logprobs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"expected a (T, k) array, got shape {lp.shape}")
    if lp.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    conf = lp @ np.full(lp.shape[1], -1.0 / lp.shape[1])  # a mat-vec: faster than mean()
    if not np.isfinite(conf).all():  # rare: redo with -inf log-probs floored
        conf = -np.maximum(lp, _FLOOR).mean(axis=1)
    return conf


def token_confidence_flat(logprobs: np.ndarray, ranks: np.ndarray, starts: np.ndarray,
                          ends: np.ndarray, k: int) -> np.ndarray:
    """Token confidence from vLLM's flat log-prob layout (FlatLogprobs), in one pass.

    `logprobs`/`ranks` hold every (position, entry); position i owns [starts[i], ends[i]).
    Entries ranked above k (the sampled token outside the top k) are dropped.
    """
    lp = np.maximum(np.asarray(logprobs, dtype=np.float64), _FLOOR)
    keep = np.asarray(ranks) <= k
    pos = np.repeat(np.arange(len(starts)), np.asarray(ends) - np.asarray(starts))
    total = np.bincount(pos[keep], weights=lp[keep], minlength=len(starts))
    count = np.bincount(pos[keep], minlength=len(starts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return -(total / count)


def group_confidence(conf: np.ndarray, window: int) -> np.ndarray:
    """Sliding-window means (stride 1); one window of the whole trace if it is shorter."""
    c = np.asarray(conf, dtype=np.float64)
    if c.size == 0:
        return c
    w = min(window, c.size)
    csum = np.concatenate(([0.0], np.cumsum(c)))
    return (csum[w:] - csum[:-w]) / w


def trace_stats(token_conf: np.ndarray, window: int = 2048, bottom_frac: float = 0.1) -> dict:
    """The four DeepConf trace statistics; NaN for an empty trace."""
    c = np.asarray(token_conf, dtype=np.float64)
    if c.size == 0:
        return dict.fromkeys(STAT_NAMES, math.nan)
    groups = group_confidence(c, window)
    n_low = max(1, math.ceil(bottom_frac * groups.size))
    lowest = np.partition(groups, n_low - 1)[:n_low] if n_low < groups.size else groups
    return {
        "conf_mean": float(c.mean()),
        "conf_tail": float(c[-min(window, c.size):].mean()),
        "conf_bottom10": float(lowest.mean()),
        "conf_lowest_group": float(groups.min()),
    }
