"""Votes over equivalence clusters, computed by hand."""

from confagg.voting import (
    filter_keep_count,
    filtered_vote,
    majority_vote,
    vote_counts,
    weighted_vote,
)


def test_vote_counts_skip_missing_answers():
    assert vote_counts([0, 1, -1, 0]) == {0: 2.0, 1: 1.0}
    assert vote_counts([0, 1, -1, 0], [0.5, 2.0, 9.0, 0.25]) == {0: 0.75, 1: 2.0}


def test_majority_ties_and_missing():
    assert majority_vote([2, 1, 1, 2, 0]) == 2        # tie 2 vs 1: the first to appear
    assert majority_vote([1, 2, 2]) == 2
    assert majority_vote([-1, -1, 3]) == 3            # missing answers never win
    assert majority_vote([-1, -1]) == -1
    assert majority_vote([]) == -1


def test_weighted_vote_can_overturn_the_majority():
    clusters, conf = [0, 0, 0, 1], [1.0, 1.0, 1.0, 3.5]
    assert majority_vote(clusters) == 0
    assert weighted_vote(clusters, conf) == 1
    assert weighted_vote([0, 1], [2.0, 2.0]) == 0     # exact tie: first appearance


def test_filtered_vote_keeps_the_most_confident():
    clusters = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    conf = [9.0, 1.0, 1.0, 8.0, 8.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert majority_vote(clusters) == 2
    assert filtered_vote(clusters, conf, 0.1) == 0    # ceil(1.0) = 1 trace: the 9.0
    assert filtered_vote(clusters, conf, 0.3) == 1    # 9.0, 8.5, 8.0 -> 1 has 16.5
    assert filtered_vote(clusters, conf, 1.0) == weighted_vote(clusters, conf)
    assert filtered_vote([-1, -1], [5.0, 1.0], 0.5) == -1


def test_filter_keep_count_is_not_fooled_by_float_error():
    assert 0.07 * 100 > 7  # a float product that a bare ceil() rounds up to 8
    assert filter_keep_count(0.07, 100) == 7
    assert filter_keep_count(0.1, 30) == 3
    assert filter_keep_count(0.9, 10) == 9
    assert filter_keep_count(0.1, 31) == 4
    assert filter_keep_count(0.1, 5) == 1
    # 30 traces, 0.1: of the three most confident, cluster 1 weighs most; a fourth
    # trace (cluster 0) would tip the vote to cluster 0
    clusters = [1, 0, 2, 0] + [3] * 26
    conf = [9.0, 8.9, 8.8, 8.7] + [0.0] * 26
    assert filtered_vote(clusters, conf, 0.1) == 1
    assert weighted_vote(clusters[:4], conf[:4]) == 0
