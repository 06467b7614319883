"""Stage 4 estimators: every voting method on hand-computed cases (ties, all wrong, no
answers, equivalent answer forms, clusters of mixed verdicts), property tests against
brute-force enumeration of every subset on random pools clustered and graded by the
real math-verify, invariance to the order of a pool, the subset estimator, bootstrap
and paired intervals, and a synthetic pool whose whole summary is known exactly."""

from __future__ import annotations

import math
from itertools import combinations

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
    paired_difference,
    percentile_of_sorted,
    reference_accuracy,
    vote_accuracy,
)
from confagg.grading import Grader, cluster_answers
from confagg.report import summary_csv
from confagg.voting import filtered_vote, majority_vote, weighted_vote


def pool(clusters, correct, conf, tokens=None):
    n = len(clusters)
    return ProblemPool(clusters, correct, conf, tokens if tokens is not None else [10] * n)


def one(method, p):
    """Accuracy of `method` on the whole pool as one subset."""
    return method_accuracy(method, p, np.arange(p.size)[None, :]).tolist()[0]


def subset(clusters, correct, conf, members):
    """The pool of just these members (a pool is stored in its own canonical order, so
    subsets are taken before building it)."""
    return pool(*([seq[i] for i in members] for seq in (clusters, correct, conf)))


# ------------------------------------------------------------------ brute force, by definition

def brute_score(method: str, cluster, correct, conf, subset) -> float:
    """One subset scored from the definitions, sample by sample in plain Python: a vote
    group is an answer cluster with one verdict; a tie is worth the share of right
    groups among the tied; DeepConf's filter (answered traces, numpy's percentile, keep
    at or above it) as its reference states it."""
    conf = [c if math.isfinite(c) else 0.0 for c in conf]
    if method == "single":
        return sum(bool(c) for c in correct) / len(correct)
    if method == "oracle":
        return float(any(correct[i] for i in subset))
    answered = [i for i in subset if cluster[i] >= 0]
    if not answered:
        return 0.0

    def vote(members, weight):
        totals: dict[tuple[int, bool], float] = {}
        for i in members:
            key = (int(cluster[i]), bool(correct[i]))
            totals[key] = totals.get(key, 0.0) + weight(i)
        best = max(totals.values())
        tied = [key for key, v in totals.items() if v == best]
        return sum(right for _, right in tied) / len(tied)

    if method == "majority":
        return vote(answered, lambda i: 1.0)
    if method == "weighted":
        return vote(answered, lambda i: conf[i])
    if method in ("filtered10", "filtered90"):
        eta = 0.1 if method == "filtered10" else 0.9
        threshold = np.percentile([conf[i] for i in answered], (1 - eta) * 100)
        return vote([i for i in answered if conf[i] >= threshold], lambda i: conf[i])
    if method == "best_conf":
        top = max(conf[i] for i in answered)
        tied = [i for i in answered if conf[i] == top]
        return sum(bool(correct[i]) for i in tied) / len(tied)
    raise AssertionError(method)


def brute_accuracy(method, d, m) -> float:
    n = len(d["cluster"])
    scores = [brute_score(method, d["cluster"], d["correct"], d["conf"], s)
              for s in combinations(range(n), m)]
    return sum(scores) / len(scores)


# Answer forms around the gold "10": equivalent forms, forms that math-verify puts in
# one cluster with a representative but grades differently ("10\%" is right and is
# equivalent to "0.1", which is wrong), and plainly wrong answers.
GOLD = "10"
FORMS = ["10", "10.0", "\\frac{20}{2}", "10\\%", "0.1", "1/10", "11", "9", "5+5", None]
# Confidences: halves and quarters, so sums are exact and ties are real ties.
CONF_VALUES = [0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


@pytest.fixture(scope="module")
def random_pools() -> list[dict]:
    """240 pools of 1-10 samples: answers drawn from FORMS, clustered and graded by the
    real math-verify; confidences from CONF_VALUES (ties) or continuous, some NaN."""
    rng = np.random.default_rng(2024)
    pools = []
    with Grader(workers=1, timeout_s=10) as grader:
        for k in range(240):
            n = int(rng.integers(1, 11))
            forms = rng.choice(len(FORMS), size=int(rng.integers(1, 5)), replace=False)
            answers = [FORMS[i] for i in rng.choice(forms, size=n)]
            if k % 4 == 0 and n >= 2:  # "10\%" seen first, so "0.1" joins its cluster
                answers[0], answers[int(rng.integers(1, n))] = "10\\%", "0.1"
            cluster = cluster_answers(answers, grader)
            correct = np.array([g.correct for g in grader.grade([(GOLD, a) for a in answers])])
            if k % 3 == 2:
                conf = rng.random(n) * 5
            else:
                conf = rng.choice(CONF_VALUES, size=n)
            if k % 17 == 0:
                conf[rng.integers(0, n)] = np.nan
            pools.append({"answers": answers, "cluster": cluster.tolist(),
                          "correct": correct.tolist(), "conf": conf.tolist(),
                          "tokens": rng.integers(1, 100, n).tolist()})
    return pools


def as_pool(d) -> ProblemPool:
    return ProblemPool(d["cluster"], d["correct"], d["conf"], d["tokens"])


@pytest.fixture(scope="module")
def exact_rows(random_pools) -> list[dict]:
    """{(method, budget): accuracy} per random pool, on the exact path (all subsets)."""
    return [{(r["method"], r["budget"]): r["accuracy"]
             for r in evaluate_pools({"p": as_pool(d)}, n_draws=10_000, n_boot=1, seed=0)}
            for d in random_pools]


def test_random_pools_cover_the_hard_cases(random_pools):
    mixed = ties = unanswered = 0
    for d in random_pools:
        cl, cor, conf = np.array(d["cluster"]), np.array(d["correct"]), np.array(d["conf"])
        mixed += any(len(set(cor[cl == c])) > 1 for c in set(cl[cl >= 0].tolist()))
        ties += len(set(conf.tolist())) < len(conf)
        unanswered += bool((cl < 0).any())
    assert min(mixed, ties, unanswered) >= 20, (mixed, ties, unanswered)


def test_every_method_equals_brute_force_enumeration(random_pools, exact_rows):
    """The exact path (all subsets) of evaluate_pools against the definitions."""
    for d, acc in zip(random_pools, exact_rows):
        assert set(acc) == {(m, b) for m in MODEL_FREE for b in budgets_up_to(len(d["conf"]))}
        for (method, m), got in acc.items():
            want = brute_accuracy(method, d, m)
            assert got == pytest.approx(want, abs=1e-12), (method, m, d)


def test_sampled_subsets_are_scored_as_sets_by_the_definitions(random_pools):
    """The sampled path: each drawn row scores what brute force gives for that subset,
    whatever the order of the samples in the row."""
    rng = np.random.default_rng(7)
    checked = 0
    for d in random_pools:
        p = as_pool(d)
        n = p.size
        if n < 5:
            continue
        m = int(rng.integers(3, n))
        draws = min(20, math.comb(n, m) - 1)  # fewer than all subsets: drawn, not enumerated
        idx = draw_subsets(n, m, draws, rng)
        assert idx.shape == (draws, m)
        shuffled = rng.permuted(idx, axis=1)
        pd = {"cluster": p.cluster.tolist(), "correct": p.correct.tolist(),
              "conf": p.conf.tolist()}
        for meth in MODEL_FREE:
            got = method_accuracy(meth, p, idx)
            assert method_accuracy(meth, p, shuffled).tolist() == got.tolist(), meth
            want = [brute_score(meth, pd["cluster"], pd["correct"], pd["conf"], row)
                    for row in idx.tolist()]
            assert got.tolist() == pytest.approx(want, abs=1e-12), meth
            checked += 1
    assert checked > 100 * len(MODEL_FREE) / 7


def permuted(d, rng) -> dict:
    """The same pool in another order, cluster ids renumbered by first appearance."""
    order = rng.permutation(len(d["cluster"]))
    cluster = [d["cluster"][i] for i in order]
    first: dict[int, int] = {}
    for c in cluster:
        if c >= 0:
            first.setdefault(c, len(first))
    return {"cluster": [first.get(c, -1) for c in cluster],
            **{k: [d[k][i] for i in order] for k in ("correct", "conf", "tokens")}}


@pytest.mark.parametrize("n_draws", [4, 10_000])  # the sampled and the exact path
def test_permuting_a_pool_changes_no_estimate(random_pools, n_draws):
    rng = np.random.default_rng(11)
    for d in random_pools[:100]:
        base = evaluate_pools({"p": as_pool(d)}, n_draws=n_draws, n_boot=20, seed=3)
        again = evaluate_pools({"p": as_pool(permuted(d, rng))}, n_draws=n_draws, n_boot=20,
                               seed=3)
        assert again == base, d


def test_no_method_is_right_where_the_oracle_is_not(random_pools):
    """On every subset of every pool: majority, weighted (and every other selector) <=
    oracle; so also in expectation, at every budget."""
    for d in random_pools:
        p = as_pool(d)
        for m in budgets_up_to(p.size):
            idx = draw_subsets(p.size, m, 10_000, np.random.default_rng(0))
            oracle = method_accuracy("oracle", p, idx)
            for meth in ("majority", "weighted", "filtered10", "filtered90", "best_conf"):
                assert (method_accuracy(meth, p, idx) <= oracle).all(), (meth, m, d)
        single = method_accuracy("single", p, np.zeros((1, 1), int))[0]
        assert single <= one("oracle", p) + 1e-12


def test_filtered90_is_not_the_weighted_vote(random_pools, exact_rows):
    """ceil(0.9 m) kept every trace at m <= 9, so filtered90 was weighted at every m <= 8;
    the reference's percentile drops the least confident answered trace."""
    differ = 0
    for d, acc in zip(random_pools, exact_rows):
        differ += any(acc[("filtered90", m)] != acc[("weighted", m)]
                      for m in budgets_up_to(len(d["cluster"])) if m <= 8)
    assert differ >= 20


def test_percentile_of_sorted_rows_is_numpys_percentile_bit_for_bit():
    """The estimator's vectorized threshold against np.percentile (what DeepConf's
    reference calls) for 1-300 values, both filters, ties and values a few ulps apart."""
    rng = np.random.default_rng(0)
    for k in [*range(1, 40), 63, 64, 100, 127, 128, 255, 300]:
        rows = [rng.random(k) * 20, rng.choice([0.5, 1.0, 1.5], k), 1e3 + rng.random(k) * 1e-12,
                np.full(k, 7.25), rng.normal(12, 1.5, k) * rng.choice([1e-6, 1, 1e6])]
        width = k + 3  # padding after the k valid values must not matter
        ascending = np.full((len(rows), width), np.inf)
        for r, x in enumerate(rows):
            ascending[r, :k] = np.sort(x)
        for q in ((1 - 0.1) * 100, (1 - 0.9) * 100, 50.0, 0.0, 100.0):
            got = percentile_of_sorted(ascending, np.full(len(rows), k), q)
            want = np.array([np.percentile(x, q) for x in rows])
            assert got.tolist() == want.tolist(), (k, q)
    # rows of different lengths in one call
    ascending = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, np.inf], [2.0, np.inf, np.inf]])
    assert percentile_of_sorted(ascending, np.array([3, 2, 1]), 90.0).tolist() == [
        np.percentile([1.0, 2.0, 4.0], 90.0), np.percentile([3.0, 5.0], 90.0), 2.0]


# ------------------------------------------------------------------------ hand-made cases

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
    # the six answered: 90th percentile 7.0 keeps the 9.0 trace (wrong); the 10th, 1.0,
    # keeps all six (ties at the threshold stay): the weighted vote
    assert one("filtered10", p) == 0.0
    assert one("filtered90", p) == 1.0
    assert one("best_conf", p) == 0.0     # the 9.0 trace: the 9.5 one has no answer
    assert one("oracle", p) == 1.0
    # two traces tied at the top: the 10% filter keeps both, whose votes tie 5 to 5
    q = ([0] + [1] * 10, [1] + [0] * 10, [5, 5] + [1] * 9)
    assert one("filtered10", subset(*q, range(10))) == 0.5
    q = pool(*q)
    assert one("filtered10", q) == 0.5
    assert one("filtered90", q) == 0.0    # all kept: 5 for cluster 0, 14 for cluster 1


def test_filtered_votes_only_among_answered_traces():
    # m = 8: the two most confident traces have no answer; the most confident answer is
    # right. Keeping the top 10% of all eight would keep only a trace without an answer.
    p = pool([-1, -1, 0, 1, 1, 2, 1, 2], [0, 0, 1, 0, 0, 0, 0, 0],
             [9.9, 9.8, 8.0, 2.0, 1.0, 3.0, 1.5, 1.0])
    assert one("filtered10", p) == 1.0
    assert one("majority", p) == 0.0


def test_filtered90_drops_the_least_confident_answered_trace():
    # weighted: 1.0 + 1.5 for the right cluster against 2.0; the 10th percentile (1.1)
    # drops the 1.0 trace, so the filtered vote is 1.5 against 2.0
    p = pool([0, 0, 1], [1, 1, 0], [1.0, 1.5, 2.0])
    assert one("weighted", p) == 1.0
    assert one("filtered90", p) == 0.0


def test_confidence_ties_score_their_expected_accuracy_in_any_order():
    # four equally confident answers, one right: a random pick is right 1 time in 4
    p = pool([0, 1, 2, 3], [1, 0, 0, 0], [2.0] * 4)
    r = pool([3, 2, 1, 0], [0, 0, 0, 1], [2.0] * 4)
    for q in (p, r):
        assert one("best_conf", q) == 0.25
        assert one("weighted", q) == 0.25 and one("majority", q) == 0.25
        assert one("filtered10", q) == 0.25  # all four tied at the threshold
    # two of three tied at the top: the right one is picked half the time
    assert one("best_conf", pool([0, 1, 1], [1, 0, 0], [3.0, 3.0, 1.0])) == 0.5


def test_a_cluster_of_mixed_verdicts_is_split():
    # With gold 10, math-verify puts "10\%", "10", "10", "0.1" in one cluster (each is
    # compared with the first) but grades them right, right, right, wrong.
    answers = ["10\\%", "10", "10", "0.1"]
    with Grader(workers=1, timeout_s=10) as grader:
        clusters = cluster_answers(answers, grader)
        correct = [g.correct for g in grader.grade([("10", a) for a in answers])]
    assert clusters.tolist() == [0, 0, 0, 0] and correct == [True, True, True, False]
    p = pool(clusters, correct, [1.0] * 4)
    assert sorted(p.cluster.tolist()) == [0, 1, 1, 1]  # two clusters, one verdict each
    rows = evaluate_pools({"x": p}, n_draws=100, n_boot=10, seed=0)
    acc = {(r["method"], r["budget"]): r["accuracy"] for r in rows}
    assert acc[("majority", 1)] == acc[("oracle", 1)] == 0.75   # was 1.0 > 0.75
    assert acc[("majority", 4)] == 1.0                          # 3 votes against 1


def test_cluster_ids_of_any_size_name_the_same_clusters():
    """A pool built outside the pipeline may use any integer ids (hashes, say): they are
    split by verdict without narrowing, so two clusters stay two and -2**32 is no answer."""
    small = pool([0, 0, 1, 2, -1], [0, 0, 0, 1, 0], [1.0, 2.0, 3.0, 4.0, 5.0])
    large = pool([7, 7, 2**32 + 7, 2**40, -2**32], [0, 0, 0, 1, 0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert large.cluster.tolist() == small.cluster.tolist()
    assert large.cluster.tolist() == [-1, 0, 0, 1, 2]  # two wrong clusters, one right


def test_best_conf_uses_answered_samples_and_scores_0_without_any():
    p = ([-1, 1, 0], [0, 0, 1], [9.0, 2.0, 3.0])
    assert one("best_conf", pool(*p)) == 1.0
    assert one("best_conf", subset(*p, [0, 1])) == 0.0
    assert one("best_conf", pool([-1, -1], [0, 0], [1.0, 2.0])) == 0.0


def test_equivalent_answer_forms_vote_together():
    # Stage 1's clustering by math-verify equivalence (the real grader): three forms
    # of one half, two identical wrong strings.
    answers = ["\\frac{1}{2}", "3", "0.5", "3", "1/2", None]
    with Grader(workers=1, timeout_s=5) as grader:
        clusters = cluster_answers(answers, grader)
    assert clusters.tolist() == [0, 1, 0, 1, 0, -1]
    p = (clusters.tolist(), [1, 0, 1, 0, 1, 0], [1] * 6)
    assert one("majority", pool(*p)) == 1.0      # 3 against 2; by string it would be "3"
    assert one("majority", subset(*p, [0, 1, 2, 3])) == 0.5   # two against two: a tie


def test_all_wrong_and_all_missing_score_zero_everywhere():
    wrong = pool([0, 1, 1], [0, 0, 0], [1, 2, 3])
    missing = pool([-1, -1, -1], [0, 0, 0], [1, 2, 3])
    for m in MODEL_FREE:
        assert one(m, wrong) == 0.0, m
        assert one(m, missing) == 0.0, m


def test_non_finite_confidence_counts_as_least_confident():
    p = pool([0, 1], [1, 0], [2.0, math.nan])
    assert sorted(p.conf.tolist()) == [0.0, 2.0]
    assert one("best_conf", p) == 1.0 and one("weighted", p) == 1.0


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="one length"):
        ProblemPool([0, 1], [True], [1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="at least one sample"):
        ProblemPool([], [], [], [])
    with pytest.raises(ValueError, match="sample 1 of the pool is marked correct but has no "
                                         "answer"):
        ProblemPool([0, -1], [False, True], [1.0, 2.0], [1, 1])
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
        for method, w in (("weighted", weighted_vote(cl.tolist(), conf.tolist())),
                          ("filtered10", filtered_vote(cl.tolist(), conf.tolist(), 0.1)),
                          ("filtered90", filtered_vote(cl.tolist(), conf.tolist(), 0.9))):
            assert one(method, p) == (float(right[w]) if w >= 0 else 0.0), method
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


def test_paired_difference_removes_the_spread_between_problems():
    # 40 problems, half solved by both methods: each method's own interval is about 30
    # points wide, but the per-problem difference is always 0 (or always 1 less on one
    # problem in four), and the paired interval says so.
    ref = {f"p{i}": float(i % 2) for i in range(40)}
    same = dict(ref)
    worse = {p: v - (1.0 if i % 4 == 1 else 0.0) for i, (p, v) in enumerate(ref.items())}
    rng = np.random.default_rng(0)
    lo, hi = bootstrap_ci(np.array(list(ref.values())), 1000, rng)
    assert hi - lo > 0.25
    assert paired_difference(same, ref, 1000, rng) == (0.0, 0.0, 0.0)
    diff, dlo, dhi = paired_difference(worse, ref, 1000, rng)
    assert diff == -0.25 and -0.45 < dlo < dhi < -0.1
    # unpaired problems are an error, not a silent drop
    with pytest.raises(ValueError, match="1 problem.*no reference value"):
        paired_difference({"zz": 1.0, **same}, ref, 100, rng)


SYNTHETIC = {
    # A: always right; B: always wrong (two wrong answers); C: two right samples of
    # low confidence, two wrong answers of high confidence; D: two right samples (1.0
    # and 4.0) against two wrong ones of one answer (2.0 each).
    "A": dict(clusters=[0, 0, 0, 0], correct=[1, 1, 1, 1], conf=[1, 2, 3, 4], tokens=[10] * 4),
    "B": dict(clusters=[0, 1, 0, 1], correct=[0, 0, 0, 0], conf=[1, 2, 3, 4], tokens=[20] * 4),
    "C": dict(clusters=[0, 0, 1, 2], correct=[1, 1, 0, 0], conf=[1, 1, 4, 3], tokens=[30] * 4),
    "D": dict(clusters=[0, 0, 1, 1], correct=[1, 1, 0, 0], conf=[1, 4, 2, 2], tokens=[40] * 4),
}
# Worked by hand. C at m=2 (6 pairs): {0,1} both right; {0,2},{0,3},{1,2},{1,3} split
# 1-1 (majority 0.5 each, but the wrong one is more confident); {2,3} both wrong.
# C at m=4: majority 2 vs 1 vs 1 right; weights 2 vs 4 vs 3 wrong; the 90th percentile
# (3.7) keeps the 4.0 trace, the 10th (1.0) all; the most confident sample wrong.
# D at m=2: {0,1} right, {2,3} wrong; the 1.0 trace loses to a 2.0 one ({0,2}, {0,3}:
# every confidence method 0, majority 0.5), the 4.0 trace wins ({1,2}, {1,3}: 1).
# D at m=4: majority ties 2-2; weighted 5 against 4; the 10th percentile (1.3) drops
# the 1.0 trace, leaving a 4-4 tie (0.5); the 90th (3.4) keeps the 4.0 trace alone.
# A adds 1, B adds 0 to every sum over the 4 problems.
EXPECTED = {
    1: dict.fromkeys(MODEL_FREE, 2 / 4),
    2: {"single": 2 / 4, "majority": 2 / 4, "weighted": (1 + 1 / 6 + 1 / 2) / 4,
        "filtered10": (1 + 1 / 6 + 1 / 2) / 4, "filtered90": (1 + 1 / 6 + 1 / 2) / 4,
        "best_conf": (1 + 1 / 6 + 1 / 2) / 4, "oracle": (1 + 5 / 6 + 5 / 6) / 4},
    4: {"single": 2 / 4, "majority": 2.5 / 4, "weighted": 2 / 4, "filtered10": 2 / 4,
        "filtered90": 1.5 / 4, "best_conf": 2 / 4, "oracle": 3 / 4},
}


def synthetic_pools():
    return {pid: ProblemPool(d["clusters"], d["correct"], d["conf"], d["tokens"])
            for pid, d in SYNTHETIC.items()}


def test_synthetic_pool_gives_the_exact_expected_summary():
    pools = synthetic_pools()
    per_problem = {}
    rows = evaluate_pools(pools, n_draws=100, n_boot=500, seed=0, per_problem=per_problem)
    got = {(r["method"], r["budget"]): r for r in rows}
    assert set(got) == {(m, b) for m in MODEL_FREE for b in (1, 2, 4)}
    for b, per_method in EXPECTED.items():
        for m, acc in per_method.items():
            assert got[(m, b)]["accuracy"] == pytest.approx(acc), (m, b)
            # m samples of 10, 20, 30 or 40 tokens: 25 per sample on average; single reads one
            assert got[(m, b)]["mean_tokens"] == pytest.approx(25.0 if m == "single" else 25 * b)
            assert got[(m, b)]["n_problems"] == 4
            assert np.mean(list(per_problem[(m, b)].values())) == pytest.approx(acc)
    assert per_problem[("majority", 4)] == {"A": 1.0, "B": 0.0, "C": 1.0, "D": 0.5}
    assert reference_accuracy(per_problem) == ("majority@4", per_problem[("majority", 4)])
    # the interval brackets the mean and stays within the per-problem extremes
    lo, hi = got[("majority", 4)]["ci_low"], got[("majority", 4)]["ci_high"]
    assert 0.0 <= lo < 2.5 / 4 < hi <= 1.0
    lines = summary_csv([{"benchmark": "S", **r} for r in rows]).splitlines()
    assert lines[0] == ("benchmark,method,budget,accuracy,ci_low,ci_high,mean_tokens,diff_ref,"
                        "diff,diff_low,diff_high")
    assert f"S,majority,4,0.625,{round(lo, 6)},{round(hi, 6)},100.0,,,," in lines
    assert "S,weighted,2,0.416667," in "\n".join(lines)
    assert len(lines) == 1 + 3 * len(MODEL_FREE)
    # the same seed gives the same rows; the draws of a problem do not depend on the others
    assert evaluate_pools(pools, n_draws=100, n_boot=500, seed=0) == rows


def test_estimates_on_sampled_subsets_are_reproducible_and_seeded():
    rng = np.random.default_rng(5)
    pools = {}
    for i in range(5):
        cl = rng.integers(-1, 5, 40)
        pools[f"p{i}"] = pool(cl, (cl >= 0) & (rng.random(40) < 0.3), rng.random(40))
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
    assert rows[0]["method"] == "conf_agg" and "diff" not in rows[0]
    assert rows[1]["ci_low"] == 0.0 and rows[1]["ci_high"] == 1.0
    # paired with a reference: the mean of the per-problem differences
    ref = ("majority@8", {"p": 1.0, "q": 0.5, "r": 0.0})
    rows = aggregator_rows(per_problem, tokens, "agglm", n_boot=200, seed=0, reference=ref)
    assert [(r["method"], r["diff_ref"], r["diff"]) for r in rows] == [
        ("agglm", "majority@8", ((0.5 - 1.0) + (1.0 - 0.5)) / 2),
        ("agglm", "majority@8", ((0.0 - 1.0) + (1.0 - 0.5)) / 2)]
    assert all(r["diff_low"] <= r["diff"] <= r["diff_high"] for r in rows)
