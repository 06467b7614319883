"""DeepConf confidence (arXiv 2508.15260) from the solver's token log-probabilities.

Token confidence: C_i = -(1/k) * sum of the top-k log-probs at position i (k = the
`logprobs` setting, 20). Convention here: only the k highest-ranked entries count,
each once; the sampled token, which vLLM adds to a position's entries (first, also
when it is in the top k), is left out when it falls outside the top k (the paper's
patch does the same; the reference code keeps it).
A peaked distribution gives very negative log-probs to the runners-up, so a higher
C means a more confident step.

Trace statistics over C (all vectorized with cumulative sums):
- conf_mean: mean of C;
- group confidence: means of C over sliding windows of `window` tokens (stride 1);
  a trace shorter than the window is one window of its whole length;
- conf_lowest_group: the lowest group confidence;
- conf_bottom10: mean of the lowest `bottom_frac` (10%) of group confidences, counted
  as DeepConf's reference does: max(1, floor(bottom_frac x groups)), so a trace needs
  20 groups before more than its lowest one is averaged;
- conf_tail: mean of C over the last `window` tokens.

A window longer than the traces collapses all four into conf_mean (one group): the
window must fit the traces (`generation.confidence_window`).
"""

from __future__ import annotations

import array
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


def token_confidence_flat(logprobs, ranks, starts, ends, k: int) -> np.ndarray:
    """Token confidence from vLLM's flat log-prob layout (FlatLogprobs), in one pass.

    Position i owns entries [starts[i], ends[i]) of `logprobs`/`ranks`. vLLM (0.32,
    `append_logprobs_for_next_position`) writes the sampled token first, then the top k
    in rank order, so the sampled token appears twice when it is in the top k. Only the
    top k count, each once: the sampled token's own entry is never counted.

    Fast path for that layout (k + 1 entries per position, ranks 1..k after the first):
    one conversion of the flat list and a strided mean, no Python loop per entry.
    Any other layout: entries ranked above k are dropped and a rank seen twice in a
    position counts once.
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    stride = k + 1
    if len(logprobs) == n * stride and _strided_layout(ranks, starts, n, k):
        lp = _floats(logprobs).reshape(n, stride)[:, 1:]
        conf = lp @ np.full(k, -1.0 / k)
        if not np.isfinite(conf).all():  # rare: an impossible token's -inf log-prob
            conf = -np.maximum(lp, _FLOOR).mean(axis=1)
        return conf
    lp = np.maximum(np.asarray(logprobs, dtype=np.float64), _FLOOR)
    rk = np.array([r if r is not None else k + 1 for r in ranks], dtype=np.int64)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    pos = np.repeat(np.arange(n), ends - starts)
    keep = rk <= k
    # A (position, rank) pair counts once: the sampled token duplicates a top-k entry.
    _, first = np.unique(pos[keep] * (k + 1) + rk[keep], return_index=True)
    idx = np.flatnonzero(keep)[first]
    total = np.bincount(pos[idx], weights=lp[idx], minlength=n)
    count = np.bincount(pos[idx], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return -(total / count)


def _floats(values) -> np.ndarray:
    """A float64 array of a list of floats (vLLM's lists): through array.array, which
    converts a list about 1.4x faster than np.asarray; anything else as np.asarray."""
    if isinstance(values, list):
        try:
            return np.frombuffer(array.array("d", values), dtype=np.float64)
        except TypeError:  # not all floats (None): numpy's conversion decides
            pass
    return np.asarray(values, dtype=np.float64)


def _strided_layout(ranks, starts, n: int, k: int) -> bool:
    """Whether the entries are vLLM's layout: every position k + 1 entries long, the
    sampled token first, then ranks 1..k (checked on the first and last top-k column)."""
    stride = k + 1
    if isinstance(starts, list):  # vLLM's lists: compared as lists, no conversion
        if starts != list(range(0, n * stride, stride)):
            return False
    elif not np.array_equal(np.asarray(starts), np.arange(n) * stride):
        return False
    first, last = ranks[1::stride], ranks[k::stride]
    if isinstance(first, list):
        return first == [1] * n and last == [k] * n
    return (len(first) == n and len(last) == n and bool((np.asarray(first) == 1).all())
            and bool((np.asarray(last) == k).all()))


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
    n_low = max(1, int(groups.size * bottom_frac))  # the reference's count (a floor)
    lowest = np.partition(groups, n_low - 1)[:n_low] if n_low < groups.size else groups
    return {
        "conf_mean": float(c.mean()),
        "conf_tail": float(c[-min(window, c.size):].mean()),
        "conf_bottom10": float(lowest.mean()),
        "conf_lowest_group": float(groups.min()),
    }


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve of `scores` for predicting `labels` (True = positive):
    the chance that a random positive scores above a random negative, ties counting
    one half (Mann-Whitney with average ranks). Non-finite scores are left out; None
    when either class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average rank of each run of equal scores (1-based)
    starts = np.flatnonzero(np.concatenate(([True], sorted_s[1:] != sorted_s[:-1])))
    ends = np.concatenate((starts[1:], [s.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
