"""Stage 4 estimators: every voting method on hand-computed cases (ties, all wrong, no
answers, equivalent answer forms), the subset estimator, bootstrap intervals, and a
synthetic pool whose whole summary is known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from confagg.estimators import (
    MODEL_FREE,
    ProblemPool,
    aggregator_rows,
    bootstrap_ci,
    budgets_up_to,
    draw_subsets,
    evaluate_pools,
    method_accuracy,
    vote_accuracy,
)
from confagg.grading import Grader, cluster_answers
from confagg.report import summary_csv
from confagg.voting import majority_vote, weighted_vote


def pool(clusters, correct, conf, tokens=None):
    n = len(clusters)
    return ProblemPool(clusters, correct, conf, tokens if tokens is not None else [10] * n)


def one(method, p, members=None):
    """Accuracy of `method` on one subset (all samples by default)."""
    idx = np.arange(p.size)[None, :] if members is None else np.array([members])
    return method_accuracy(method, p, idx).tolist()[0]


def test_vote_accuracy_ties_missing_and_weights():
    right = np.array([True, False, False])
    ones = np.ones((1, 3))
    assert vote_accuracy(np.array([[0, 1]]), np.ones((1, 2)), right).tolist() == [0.5]  # 1-1 tie
    assert vote_accuracy(np.array([[0, 0, 1]]), ones, right).tolist() == [1.0]
    assert vote_accuracy(np.array([[1, 1, 0]]), ones, right).tolist() == [0.0]
    assert vote_accuracy(np.array([[0, 1, 2]]), ones, right).tolist() == [pytest.approx(1 / 3)]
    assert vote_accuracy(np.array([[1, 2, 1]]), ones, right).tolist() == [0.0]  # wrong wins
    # no answer never votes, and a subset without answers scores 0
    assert vote_accuracy(np.array([[-1, -1]]), np.ones((1, 2)), right).tolist() == [0.0]
    assert vote_accuracy(np.array([[-1, 0]]), np.ones((1, 2)), right).tolist() == [1.0]
    assert vote_accuracy(np.array([[-1, -1, 1]]), ones, right).tolist() == [0.0]
    # weights: 3 for the right cluster beat 1 + 1; 1 loses to 1.5 + 1.5
    assert vote_accuracy(np.array([[0, 1, 1]]), np.array([[3.0, 1, 1]]), right).tolist() == [1.0]
    assert vote_accuracy(np.array([[0, 1, 1]]), np.array([[1.0, 1.5, 1.5]]),
                         right).tolist() == [0.0]
    # a weighted tie (0.3 = 0.1 + 0.2 in floating point) is still a tie
    assert vote_accuracy(np.array([[0, 1, 1]]), np.array([[0.3, 0.1, 0.2]]),
                         right).tolist() == [0.5]
    # a problem where nobody answered has no clusters at all
    assert vote_accuracy(np.array([[-1]]), np.ones((1, 1)), np.zeros(0, bool)).tolist() == [0.0]
    # rows are independent
    rows = vote_accuracy(np.array([[0, 1], [0, 0], [2, 2]]), np.ones((3, 2)), right)
    assert rows.tolist() == [0.5, 1.0, 0.0]


def test_each_method_on_one_hand_made_pool():
    # cluster 0: right, two votes of low confidence; cluster 1: wrong, three votes;
    # cluster 2: wrong, one very confident vote; one even more confident sample without
    # an answer (cut off).
    p = pool([0, 0, 1, 1, 1, 2, -1], [1, 1, 0, 0, 0, 0, 0], [5.0, 5.0, 1.0, 1.0, 1.0, 9.0, 9.5])
    assert one("single", p) == pytest.approx(2 / 7)
    assert one("majority", p) == 0.0      # 3 votes for cluster 1
    assert one("weighted", p) == 1.0      # 10 for cluster 0 against 3 and 9
    assert one("filtered10", p) == 0.0    # ceil(0.7) = 1: only the 9.5 trace, no answer
    assert one("filtered90", p) == 1.0    # ceil(6.3) = 7: the weighted vote of all
    assert one("best_conf", p) == 0.0     # the 9.0 trace: the 9.5 one has no answer
    assert one("oracle", p) == 1.0
    # filtered10 on 10 samples keeps exactly one (the first of two equally confident);
    # on 11, two (ceil(1.1)), which tie 5 to 5
    q = pool([0] + [1] * 10, [1] + [0] * 10, [5, 5] + [1] * 9)
    assert one("filtered10", q, list(range(10))) == 1.0
    assert one("filtered10", q) == 0.5
    assert one("filtered90", q) == 0.0    # ceil(9.9) = 10 kept: 5 for cluster 0, 13 for 1


def test_best_conf_uses_answered_samples_and_scores_0_without_any():
    p = pool([-1, 1, 0], [0, 0, 1], [9.0, 2.0, 3.0])
    assert one("best_conf", p) == 1.0
    assert one("best_conf", p, [0, 1]) == 0.0
    assert one("best_conf", pool([-1, -1], [0, 0], [1.0, 2.0])) == 0.0


def test_equivalent_answer_forms_vote_together():
    # Stage 1's clustering by math-verify equivalence (the real grader): three forms
    # of one half, two identical wrong strings.
    answers = ["\\frac{1}{2}", "3", "0.5", "3", "1/2", None]
    with Grader(workers=1, timeout_s=5) as grader:
        clusters = cluster_answers(answers, grader)
    assert clusters.tolist() == [0, 1, 0, 1, 0, -1]
    p = pool(clusters, [1, 0, 1, 0, 1, 0], [1] * 6)
    assert one("majority", p) == 1.0      # 3 against 2; by string it would be "3"
    assert one("majority", p, [0, 1, 2, 3]) == 0.5   # two against two: a tie


def test_all_wrong_and_all_missing_score_zero_everywhere():
    wrong = pool([0, 1, 1], [0, 0, 0], [1, 2, 3])
    missing = pool([-1, -1, -1], [0, 0, 0], [1, 2, 3])
    for m in MODEL_FREE:
        assert one(m, wrong) == 0.0, m
        assert one(m, missing) == 0.0, m


def test_non_finite_confidence_counts_as_least_confident():
    p = pool([0, 1], [1, 0], [2.0, math.nan])
    assert p.conf.tolist() == [2.0, 0.0]
    assert one("best_conf", p) == 1.0 and one("weighted", p) == 1.0


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="one length"):
        ProblemPool([0, 1], [True], [1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="at least one sample"):
        ProblemPool([], [], [], [])
    with pytest.raises(ValueError, match="unknown method 'median'"):
        method_accuracy("median", pool([0], [1], [1]), np.zeros((1, 1), int))


def test_votes_agree_with_the_voting_module_where_there_is_no_tie():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 9))
        cl = rng.integers(-1, 3, n)
        right = rng.random(3) < 0.5
        conf = rng.random(n) * 5
        p = pool(cl, np.where(cl >= 0, right[np.maximum(cl, 0)], False), conf)
        counts = np.bincount(cl[cl >= 0], minlength=3)
        if counts.max() > 0 and (counts == counts.max()).sum() == 1:
            winner = majority_vote(cl.tolist())
            assert one("majority", p) == float(right[winner])
            checked += 1
        w = weighted_vote(cl.tolist(), conf.tolist())
        assert one("weighted", p) == (float(right[w]) if w >= 0 else 0.0)
    assert checked > 100


def test_budgets_and_subsets():
    assert budgets_up_to(1) == [1]
    assert budgets_up_to(8) == [1, 2, 4, 8]
    assert budgets_up_to(6) == [1, 2, 4, 6]
    assert budgets_up_to(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    rng = np.random.default_rng(0)
    exact = draw_subsets(4, 2, 100, rng)             # all C(4, 2) subsets
    assert sorted(map(tuple, exact.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3),
                                                  (2, 3)]
    assert draw_subsets(64, 64, 10, rng).tolist() == [list(range(64))]
    sampled = draw_subsets(64, 8, 4000, rng)
    assert sampled.shape == (4000, 8)
    assert all(len(set(r)) == 8 for r in sampled.tolist())
    freq = np.bincount(sampled.ravel(), minlength=64) / sampled.size
    assert np.abs(freq - 1 / 64).max() < 0.004      # uniform over samples
    with pytest.raises(ValueError, match="between 1 and the pool size 4"):
        draw_subsets(4, 5, 10, rng)


def test_sampled_estimate_converges_to_the_exact_one():
    rng = np.random.default_rng(1)
    cl = rng.integers(-1, 4, 12)
    p = pool(cl, np.isin(cl, [1]), rng.random(12))
    exact_idx = draw_subsets(12, 4, 10_000, rng)     # C(12, 4) = 495: enumerated
    assert exact_idx.shape[0] == 495
    sampled_idx = draw_subsets(12, 4, 400, np.random.default_rng(2))
    for m in MODEL_FREE:
        exact = method_accuracy(m, p, exact_idx).mean()
        assert method_accuracy(m, p, sampled_idx).mean() == pytest.approx(exact, abs=0.06), m


def test_bootstrap_interval():
    x = np.array([0.0, 1.0] * 20)
    lo, hi = bootstrap_ci(x, 2000, np.random.default_rng(0))
    # the normal approximation: 0.5 +- 1.96 * 0.5 / sqrt(40) = 0.5 +- 0.155
    assert lo == pytest.approx(0.345, abs=0.03) and hi == pytest.approx(0.655, abs=0.03)
    assert bootstrap_ci(np.ones(10), 100, np.random.default_rng(0)) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([]), 100,
                                                   np.random.default_rng(0)))


SYNTHETIC = {
    # A: always right; B: always wrong (two wrong answers); C: two right samples of
    # low confidence, two wrong answers of high confidence.
    "A": dict(clusters=[0, 0, 0, 0], correct=[1, 1, 1, 1], conf=[1, 2, 3, 4], tokens=[10] * 4),
    "B": dict(clusters=[0, 1, 0, 1], correct=[0, 0, 0, 0], conf=[1, 2, 3, 4], tokens=[20] * 4),
    "C": dict(clusters=[0, 0, 1, 2], correct=[1, 1, 0, 0], conf=[1, 1, 4, 3], tokens=[30] * 4),
}
# Worked by hand. C at m=2 (6 pairs): {0,1} both right; {0,2},{0,3},{1,2},{1,3} split
# 1-1 (majority 0.5 each, but the wrong one is more confident); {2,3} both wrong.
# C at m=4: majority 2 vs 1 vs 1 right; weights 2 vs 4 vs 3 wrong; the most
# confident sample (4.0) wrong. A adds 1, B adds 0 to every mean over the 3 problems.
EXPECTED = {
    1: dict.fromkeys(MODEL_FREE, 1.5 / 3),
    2: {"single": 1.5 / 3, "majority": 1.5 / 3, "weighted": 7 / 18, "filtered10": 7 / 18,
        "filtered90": 7 / 18, "best_conf": 7 / 18, "oracle": 11 / 18},
    4: {"single": 1.5 / 3, "majority": 2 / 3, "weighted": 1 / 3, "filtered10": 1 / 3,
        "filtered90": 1 / 3, "best_conf": 1 / 3, "oracle": 2 / 3},
}


def test_synthetic_pool_gives_the_exact_expected_summary():
    pools = {pid: ProblemPool(d["clusters"], d["correct"], d["conf"], d["tokens"])
             for pid, d in SYNTHETIC.items()}
    rows = evaluate_pools(pools, n_draws=100, n_boot=500, seed=0)
    got = {(r["method"], r["budget"]): r for r in rows}
    assert set(got) == {(m, b) for m in MODEL_FREE for b in (1, 2, 4)}
    for b, per_method in EXPECTED.items():
        for m, acc in per_method.items():
            assert got[(m, b)]["accuracy"] == pytest.approx(acc), (m, b)
            # m samples of 10, 20 or 30 tokens: 20 per sample on average; single reads one
            assert got[(m, b)]["mean_tokens"] == pytest.approx(20.0 if m == "single" else 20 * b)
            assert got[(m, b)]["n_problems"] == 3
    # per problem at m=4: majority [1, 0, 1]; the bootstrap over 3 problems draws "B
    # three times" (mean 0) with probability 1/27 > 2.5% and "no B" (mean 1) 8/27
    assert (got[("majority", 4)]["ci_low"], got[("majority", 4)]["ci_high"]) == (0.0, 1.0)
    lines = summary_csv([{"benchmark": "S", **r} for r in rows]).splitlines()
    assert lines[0] == "benchmark,method,budget,accuracy,ci_low,ci_high,mean_tokens"
    assert "S,majority,4,0.666667,0.0,1.0,80.0" in lines
    assert "S,weighted,2,0.388889," in "\n".join(lines)
    assert len(lines) == 1 + 3 * len(MODEL_FREE)
    # the same seed gives the same rows; the draws of a problem do not depend on the others
    assert evaluate_pools(pools, n_draws=100, n_boot=500, seed=0) == rows


def test_estimates_on_sampled_subsets_are_reproducible_and_seeded():
    rng = np.random.default_rng(5)
    pools = {f"p{i}": pool(rng.integers(-1, 5, 40), rng.random(40) < 0.3, rng.random(40))
             for i in range(5)}
    a = evaluate_pools(pools, n_draws=50, n_boot=100, seed=0)
    b = evaluate_pools(pools, n_draws=50, n_boot=100, seed=0)
    c = evaluate_pools(pools, n_draws=50, n_boot=100, seed=1)
    assert a == b
    assert [r["accuracy"] for r in a] != [r["accuracy"] for r in c]
    assert sorted({r["budget"] for r in a}) == [1, 2, 4, 8, 16, 32, 40]


def test_aggregator_rows_average_per_problem_then_over_problems():
    per_problem = {1: {"p": [1.0, 0.0], "q": [1.0, 1.0]}, 2: {"p": [0.0], "q": [1.0]}}
    tokens = {1: [100, 110, 120, 130], 2: [300, 340]}
    rows = aggregator_rows(per_problem, tokens, "conf_agg", n_boot=200, seed=0)
    assert [(r["budget"], r["accuracy"], r["mean_tokens"], r["n_problems"]) for r in rows] == \
        [(1, 0.75, 115.0, 2), (2, 0.5, 320.0, 2)]
    assert rows[0]["method"] == "conf_agg"
    assert rows[1]["ci_low"] == 0.0 and rows[1]["ci_high"] == 1.0
