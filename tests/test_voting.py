"""Single votes over equivalence clusters, computed by hand; the filtered vote as
DeepConf's offline reference defines it (answered traces only, a percentile threshold,
ties at the threshold kept)."""

import numpy as np
import pytest
from confagg.voting import (
    filter_keep,
    filter_percentile,
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


def test_filter_threshold_is_a_linear_percentile_of_the_confidences():
    conf = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    # 90th percentile of 8 values: position 0.9 * 7 = 6.3, so 7.3: only the 8.0 trace
    assert filter_keep(conf, 0.1).tolist() == [False] * 7 + [True]
    # 10th percentile: position 0.7, so 1.7: seven of eight, where ceil(0.9 * 8) keeps all
    assert filter_keep(conf, 0.9).tolist() == [False] + [True] * 7
    # the order of the traces does not matter
    assert filter_keep(conf[::-1], 0.9).tolist() == [True] * 7 + [False]
    # every trace tied at the threshold is kept: 3 of 4 under a "10%" filter
    assert filter_keep([5.0, 1.0, 5.0, 5.0], 0.1).tolist() == [True, False, True, True]
    # 11 traces: position 9.0 exactly, the second largest: two kept
    assert filter_keep(np.arange(11.0), 0.1).sum() == 2
    # one trace is always kept; no trace, nothing
    assert filter_keep([3.0], 0.1).tolist() == [True]
    assert filter_keep([], 0.1).tolist() == []
    # the percentile as the reference computes it, float error included
    assert filter_percentile(0.9) == 9.999999999999998 and filter_percentile(0.1) == 90.0
    with pytest.raises(ValueError, match="keep_frac must be in"):
        filter_percentile(0.0)


def test_filtered_vote_ignores_traces_without_an_answer():
    # the two most confident traces loop without an answer; the most confident answer
    # is right (cluster 0); a 10% filter over all eight traces would keep only a loop
    clusters = [-1, -1, 0, 1, 1, 2, 1, 2]
    conf = [9.9, 9.8, 8.0, 2.0, 1.0, 3.0, 1.5, 1.0]
    assert filtered_vote(clusters, conf, 0.1) == 0
    assert filtered_vote([-1, -1], [5.0, 1.0], 0.5) == -1
    assert filtered_vote([], [], 0.1) == -1


def test_filtered90_drops_the_least_confident_trace_where_the_weighted_vote_keeps_it():
    clusters, conf = [0, 0, 1], [1.0, 1.5, 2.0]
    assert weighted_vote(clusters, conf) == 0         # 2.5 against 2.0
    # 10th percentile of the three: 1.1; the 1.0 trace is dropped, 1.5 against 2.0
    assert filtered_vote(clusters, conf, 0.9) == 1
    assert filtered_vote(clusters, conf, 1.0) == 0    # keep_frac 1: the weighted vote


def test_filtered_vote_keeps_the_most_confident():
    clusters = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    conf = [9.0, 1.0, 1.0, 8.0, 8.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert majority_vote(clusters) == 2
    assert filtered_vote(clusters, conf, 0.1) == 0    # threshold 8.55: the 9.0 trace
    assert filtered_vote(clusters, conf, 0.2) == 0    # threshold 8.1: 9.0 against 8.5
    assert filtered_vote(clusters, conf, 0.3) == 1    # 3.1: 9.0, 8.5, 8.0 -> 1 has 16.5
    assert filtered_vote(clusters, conf, 1.0) == weighted_vote(clusters, conf)
