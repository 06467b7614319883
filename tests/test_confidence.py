"""DeepConf statistics: the vectorized code against a plain per-token reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from confagg.confidence import (
    auroc,
    group_confidence,
    token_confidence,
    token_confidence_flat,
    trace_stats,
)


def reference_token_conf(topk):
    return [-sum(row) / len(row) for row in topk]


def reference_stats(conf, window, bottom_frac=0.1):
    w = min(window, len(conf))
    groups = [sum(conf[i:i + w]) / w for i in range(len(conf) - w + 1)]
    # DeepConf's reference (deepconf/utils.py): max(1, int(len(windows) * bottom_percent))
    low = sorted(groups)[:max(1, int(len(groups) * bottom_frac))]
    return {"conf_mean": sum(conf) / len(conf),
            "conf_tail": sum(conf[-w:]) / w,
            "conf_bottom10": sum(low) / len(low),
            "conf_lowest_group": min(groups)}


def test_token_confidence_by_hand():
    topk = np.array([[-0.1, -2.0, -3.9], [-1.0, -1.0, -1.0]])
    assert token_confidence(topk).tolist() == pytest.approx([2.0, 1.0])
    # an impossible token (-inf) does not turn the confidence infinite
    assert np.isfinite(token_confidence(np.array([[-0.5, -np.inf]]))).all()


def test_stats_by_hand_window_3():
    conf = [5.0, 1.0, 3.0, 4.0, 2.0]
    # windows: (5,1,3)=3, (1,3,4)=8/3, (3,4,2)=3
    s = trace_stats(np.array(conf), window=3, bottom_frac=0.1)
    assert s["conf_mean"] == pytest.approx(3.0)
    assert s["conf_tail"] == pytest.approx(3.0)
    assert s["conf_lowest_group"] == pytest.approx(8 / 3)
    assert s["conf_bottom10"] == pytest.approx(8 / 3)  # max(1, floor(0.1 * 3)) = 1 window


def test_bottom10_counts_groups_as_the_reference_floors():
    # 19 windows of 1 token: floor(1.9) = 1 window (ceil would average the lowest 2)
    conf = np.arange(19, dtype=np.float64) + 1.0
    assert trace_stats(conf, window=1)["conf_bottom10"] == pytest.approx(1.0)
    # 20 windows: the lowest 2; 29 windows: still 2; 30 windows: 3
    for n, k in ((20, 2), (29, 2), (30, 3)):
        conf = np.arange(n, dtype=np.float64)[::-1] + 1.0
        assert trace_stats(conf, window=1)["conf_bottom10"] == pytest.approx((k + 1) / 2), n


def test_short_trace_uses_its_whole_length():
    s = trace_stats(np.array([2.0, 4.0]), window=2048)
    assert s == pytest.approx({"conf_mean": 3.0, "conf_tail": 3.0, "conf_bottom10": 3.0,
                               "conf_lowest_group": 3.0})
    assert all(math.isnan(v) for v in trace_stats(np.array([]), window=4).values())


@pytest.mark.parametrize("length, window, frac", [(1, 5, 0.1), (7, 3, 0.1), (50, 8, 0.25),
                                                  (200, 16, 0.1), (33, 33, 0.5), (48, 16, 0.1),
                                                  (45, 16, 0.1)])
def test_vectorized_matches_reference(length, window, frac):
    rng = np.random.default_rng(length)
    topk = -rng.exponential(2.0, size=(length, 20))
    conf = token_confidence(topk)
    assert conf.tolist() == pytest.approx(reference_token_conf(topk.tolist()))
    assert trace_stats(conf, window=window, bottom_frac=frac) == pytest.approx(
        reference_stats(conf.tolist(), window, frac))
    w = min(window, length)
    assert group_confidence(conf, window).shape == (length - w + 1,)


def test_flat_layout_drops_the_sampled_token_outside_the_top_k():
    # position 0: top-2 entries plus the sampled token at rank 7 (not counted)
    # position 1: exactly the top-2
    logprobs = np.array([-0.5, -1.5, -6.0, -0.2, -2.2])
    ranks = np.array([1, 2, 7, 1, 2])
    starts, ends = np.array([0, 3]), np.array([3, 5])
    conf = token_confidence_flat(logprobs, ranks, starts, ends, k=2)
    assert conf.tolist() == pytest.approx([1.0, 1.2])


def _vllm_flat(topk_rows, sampled_ranks, outside_lp=-9.0):
    """vLLM 0.32's FlatLogprobs layout: per position the sampled token first (its rank
    and log-prob), then the top k in rank order."""
    logprobs, ranks, starts, ends = [], [], [], []
    for row, r in zip(topk_rows, sampled_ranks):
        starts.append(len(logprobs))
        logprobs += [row[r - 1] if r <= len(row) else outside_lp, *row]
        ranks += [r, *range(1, len(row) + 1)]
        ends.append(len(logprobs))
    return logprobs, ranks, starts, ends


def test_flat_layout_of_vllm_counts_each_top_k_entry_once():
    rng = np.random.default_rng(0)
    topk = np.sort(-rng.exponential(2.0, size=(300, 20)), axis=1)[:, ::-1]
    sampled = rng.choice([1, 2, 5, 20, 21, 40], size=300)  # in and outside the top 20
    flat = _vllm_flat(topk.tolist(), sampled.tolist())
    expected = reference_token_conf(topk.tolist())
    # the fast path (Python lists in vLLM's strided layout) ...
    assert token_confidence_flat(*flat, k=20).tolist() == pytest.approx(expected)
    # ... and the general path (another layout: the sampled token after the top k)
    lp, rk, st, en = flat
    lp2 = np.concatenate([lp[s + 1:e] + lp[s:s + 1] for s, e in zip(st, en)])
    rk2 = np.concatenate([rk[s + 1:e] + rk[s:s + 1] for s, e in zip(st, en)])
    assert token_confidence_flat(lp2, rk2, np.array(st), np.array(en), k=20).tolist() == \
        pytest.approx(expected)


def test_auroc_against_counting_every_pair():
    assert auroc([3.0, 2.0, 1.0], [True, False, False]) == 1.0
    assert auroc([1.0, 2.0, 3.0], [True, False, False]) == 0.0
    assert auroc([1.0, 1.0], [True, False]) == 0.5            # a tie counts one half
    assert auroc([1.0, 2.0], [True, True]) is None            # one class only
    assert auroc([np.nan, 1.0, 2.0], [False, False, True]) == 1.0  # NaN left out
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 5, size=n).astype(float)          # many ties
        y = rng.random(n) < 0.4
        pos, neg = s[y], s[~y]
        if not pos.size or not neg.size:
            continue
        expected = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
        assert auroc(s, y) == pytest.approx(expected)
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        auroc([1.0, 2.0, 3.0], [True, False])
