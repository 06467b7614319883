"""Stage 4 report: the headline, the summary table and the plots (real PNGs whose
panels are counted from their pixels)."""

from __future__ import annotations

import csv
import io
import itertools

import matplotlib.image as mpimg
import numpy as np
import pytest
from confagg.estimators import aggregator_differences
from confagg.methods import COMPARISONS
from confagg.report import (
    PAIRED_COLUMNS,
    headline,
    metrics_table,
    paired_csv,
    plot,
    summary_markdown,
    verdict,
    write_summary,
)


def count_panels(png) -> int:
    """Plot panels in a PNG, from their frames: every axes box has two long dark
    vertical spines (grid lines are light, curves are coloured and not vertical)."""
    gray = mpimg.imread(png)[..., :3].mean(axis=2)
    dark = gray < 0.3
    min_run = dark.shape[0] // 6
    segments = []  # (column, first row) of every long vertical run of dark pixels
    for x in range(dark.shape[1]):
        col = np.concatenate(([0], dark[:, x].astype(np.int8), [0]))
        starts, ends = np.flatnonzero(np.diff(col) == 1), np.flatnonzero(np.diff(col) == -1)
        segments += [(x, s) for s, e in zip(starts, ends) if e - s >= min_run]
    spines: list[tuple[int, int]] = []
    for x, y in segments:  # neighbouring columns of one spine are one spine
        if not any(abs(x - sx) <= 3 and abs(y - sy) <= 5 for sx, sy in spines):
            spines.append((x, y))
    assert len(spines) % 2 == 0, spines
    return len(spines) // 2


def rows_for(bench, majority, conf_agg, n=5, method="conf_agg"):
    """Metrics rows: majority points (budget, accuracy, tokens); aggregator points
    (budget, accuracy, tokens, (diff, diff_low, diff_high) from majority at its largest
    budget, or None)."""
    rows = []
    for b, a, t in majority:
        rows.append({"benchmark": bench, "method": "majority", "budget": b, "accuracy": a,
                     "ci_low": max(0.0, a - 0.1), "ci_high": min(1.0, a + 0.1),
                     "mean_tokens": t, "n_problems": n})
    top = max(b for b, _, _ in majority)
    for b, a, t, paired in conf_agg:
        rows.append({"benchmark": bench, "method": method, "budget": b, "accuracy": a,
                     "ci_low": max(0.0, a - 0.1), "ci_high": min(1.0, a + 0.1),
                     "mean_tokens": t, "n_problems": n})
        if paired is not None:
            rows[-1].update(zip(("diff_ref", "diff", "diff_low", "diff_high"),
                                (f"majority@{top}", *paired)))
    return rows


MAJ = [(1, 0.3, 100), (2, 0.4, 200), (4, 0.5, 400), (8, 0.55, 800)]
RULE = "paired 95% intervals over 5 problems; matches: lower bound above -2 points, beats: above 0"


def test_verdicts_from_the_paired_interval():
    assert verdict(0.001, 0.2) == "beats"
    assert verdict(0.0, 0.2) == "matches"          # not above 0
    assert verdict(-0.019, 0.05) == "matches"
    assert verdict(-0.019, -0.001) == "matches"    # within the margin, even if below 0
    assert verdict(-0.02, 0.05) == "not distinguishable"
    assert verdict(-0.3, 0.2) == "not distinguishable"
    assert verdict(-0.3, -0.01) == "falls short"
    assert verdict(-0.3, 0.2, margin=0.5) == "matches"


def test_headline_finds_the_smallest_budget_the_paired_interval_supports():
    # m=2 has the point estimate of majority@8 but an interval far below the margin:
    # not enough; m=4's lower bound is -1.5 points: matches
    rows = rows_for("X", MAJ, [(1, 0.45, 150, (-0.10, -0.30, 0.05)),
                               (2, 0.55, 260, (0.0, -0.15, 0.15)),
                               (4, 0.6, 480, (0.05, -0.015, 0.12))])
    assert headline(rows) == (
        "conf_agg with m=4 candidates matches majority@8 (55.0%) with 60.0%, difference "
        "+5.0 points [-1.5, +12.0], at 0.60x its tokens (480 vs 800 per problem) (" + RULE + ")")
    beats = rows_for("X", MAJ, [(1, 0.7, 150, (0.15, 0.05, 0.25))])
    assert headline(beats).startswith("conf_agg with m=1 candidates beats majority@8 (55.0%) "
                                      "with 70.0%, difference +15.0 points [+5.0, +25.0]")
    low = rows_for("X", MAJ, [(1, 0.2, 150, (-0.35, -0.5, -0.2)),
                              (2, 0.55, 260, (0.0, -0.2, 0.2))])
    assert headline(low) == (
        "conf_agg does not match majority@8 (55.0%) at any m (m=1: 20.0%, -35.0 points "
        "[-50.0, -20.0], falls short of it; m=2: 55.0%, +0.0 points [-20.0, +20.0], is not "
        "distinguishable from it; " + RULE + ")")
    assert headline(rows_for("X", MAJ, [])) == ("conf_agg was not evaluated "
                                                "(evaluation.agg_methods)")
    assert headline(rows_for("X", MAJ, [(1, 0.6, 150, None)])) == (
        "conf_agg has no paired comparison with majority voting")
    # any aggregator method, by name
    other = rows_for("X", MAJ, [(2, 0.6, 260, (0.05, 0.01, 0.1))], method="agglm")
    assert headline(other, method="agglm").startswith("agglm with m=2 candidates beats")


def test_summary_files(tmp_path):
    rows = rows_for("X", MAJ, [(1, 0.45, 150, (-0.1, -0.3, 0.1)),
                               (2, 0.56, 260, (0.01, -0.01, 0.03))])
    rows += rows_for("Y", MAJ[:2], [(1, 0.1, 90, (-0.3, -0.5, -0.1))], n=3)
    rows += rows_for("Y", MAJ[:2], [(2, 0.5, 190, (0.1, 0.02, 0.2))], n=3, method="agglm")[2:]
    rows.append({**rows[0], "method": "single", "budget": 1})  # listed first in the table
    write_summary(rows, tmp_path / "s.csv", tmp_path / "s.md")
    table = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert [(r["benchmark"], r["method"], r["budget"]) for r in table][:7] == [
        ("X", "single", "1"), ("X", "majority", "1"), ("X", "majority", "2"),
        ("X", "majority", "4"), ("X", "majority", "8"), ("X", "conf_agg", "1"),
        ("X", "conf_agg", "2")]
    assert table[1] == {"benchmark": "X", "method": "majority", "budget": "1",
                        "accuracy": "0.3", "ci_low": "0.2", "ci_high": "0.4",
                        "mean_tokens": "100", "diff_ref": "", "diff": "", "diff_low": "",
                        "diff_high": ""}
    assert table[6] == {"benchmark": "X", "method": "conf_agg", "budget": "2",
                        "accuracy": "0.56", "ci_low": "0.46", "ci_high": "0.66",
                        "mean_tokens": "260", "diff_ref": "majority@8", "diff": "0.01",
                        "diff_low": "-0.01", "diff_high": "0.03"}
    assert [r["method"] for r in table if r["benchmark"] == "Y"][-1] == "agglm"
    md = (tmp_path / "s.md").read_text()
    assert md == summary_markdown(rows)
    assert "## X (5 problems)" in md and "## Y (3 problems)" in md
    assert md.count("**Headline:**") == 2
    assert "lower bound is above -2 points, *beats* when above 0" in md
    assert "| majority | 30.0 [20.0, 40.0] | 40.0 [30.0, 50.0] | 50.0 [40.0, 60.0] | " \
           "55.0 [45.0, 65.0] |" in md
    assert "| conf_agg | 45.0 [35.0, 55.0] | 56.0 [46.0, 66.0] |  |  |" in md
    # the paired differences, with their verdicts, for every aggregator
    assert md.count("Paired difference from majority@8 (points):") == 1
    assert md.count("Paired difference from majority@2 (points):") == 1
    assert "| conf_agg | -10.0 [-30.0, +10.0] not distinguishable | +1.0 [-1.0, +3.0] " \
           "matches |  |  |" in md
    assert "| conf_agg | -30.0 [-50.0, -10.0] falls short |  |" in md
    assert "| agglm |  | +10.0 [+2.0, +20.0] beats |" in md
    assert "| conf_agg | 150 | 260 |  |  |" in md          # tokens table
    assert "conf_agg with m=2 candidates matches majority@8 (55.0%) with 56.0%" in md
    assert "conf_agg does not match majority@2 (40.0%) at any m" in md


def test_metrics_table_schema():
    t = metrics_table("X", [{k: v for k, v in r.items() if k != "benchmark"}
                            for r in rows_for("X", MAJ, [(2, 0.5, 260, (0.1, 0.0, 0.2))])])
    assert t.column_names == ["benchmark", "method", "budget", "accuracy", "ci_low", "ci_high",
                              "mean_tokens", "n_problems", "diff_ref", "diff", "diff_low",
                              "diff_high"]
    assert t.column("budget").to_pylist() == [1, 2, 4, 8, 2]
    assert t.column("diff_ref").to_pylist() == [None] * 4 + ["majority@8"]
    assert t.column("diff_high").to_pylist() == [None] * 4 + [0.2]


@pytest.mark.parametrize("n_bench", [1, 2, 4])
def test_plots_have_one_panel_per_benchmark(tmp_path, n_bench):
    rows = [r for i in range(n_bench)
            for r in rows_for(f"bench{i}", MAJ, [(1, 0.45, 150, None), (2, 0.56, 260, None)])]
    for x in ("budget", "mean_tokens"):
        path = tmp_path / f"{x}.png"
        plot(rows, path, x=x)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert count_panels(path) == n_bench
    with pytest.raises(ValueError, match="x must be"):
        plot(rows, tmp_path / "bad.png", x="accuracy")


# ------------------------------------------------- paired differences between aggregators

# Each aggregator's correctness per (problem, m): the S x A answers of that problem's sets.
ANSWERS = {
    "conf_agg": {1: {"a": [1, 1], "b": [0, 1], "c": [1, 1], "d": [0, 0]},
                 2: {"a": [1, 1], "b": [1, 1], "c": [0, 1], "d": [1, 0]}},
    "agglm": {1: {"a": [0, 1], "b": [0, 0], "c": [1, 1], "d": [1, 1]},
              2: {"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [0, 0]}},
    # agg_prompted: conf_agg's accuracy minus 0.5 on every problem at m=2 (the paired
    # interval is then one point, however much the problems differ)
    "agg_prompted": {1: {"a": [0, 0], "b": [0, 0], "c": [0, 1], "d": [0, 0]},
                     2: {"a": [0, 1], "b": [0, 1], "c": [0, 0], "d": [0, 0]}},
}


def per_problem(method):
    return {m: {p: float(np.mean(v)) for p, v in by_p.items()}
            for m, by_p in ANSWERS[method].items()}


def exact_bootstrap(diffs, q):
    """The q-quantile of the mean of a resample with replacement, over all n^n resamples
    (each equally likely): the distribution a paired bootstrap estimates."""
    means = sorted(np.mean(c) for c in itertools.product(diffs, repeat=len(diffs)))
    return means[min(len(means) - 1, int(q * len(means)))]


def test_paired_differences_between_aggregators_by_brute_force():
    by_method = {m: per_problem(m) for m in ANSWERS}
    rows = aggregator_differences(by_method, COMPARISONS, n_boot=20000, seed=0)
    got = {(r["method"], r["baseline"], r["budget"]): r for r in rows}
    # conf_agg_noconf was not evaluated: its comparison is left out
    assert set(got) == {(a, b, m) for a, b in [("conf_agg", "agg_prompted"),
                                               ("conf_agg", "agglm")] for m in (1, 2)}
    for (a, b, m), r in got.items():
        diffs = [np.mean(ANSWERS[a][m][p]) - np.mean(ANSWERS[b][m][p]) for p in "abcd"]
        assert r["n_problems"] == 4
        assert r["diff"] == pytest.approx(np.mean(diffs))
        # the percentile interval lies between the exact 1% and 5% (95% and 99%) points
        # of the bootstrap distribution
        assert exact_bootstrap(diffs, 0.01) - 1e-9 <= r["diff_low"] \
            <= exact_bootstrap(diffs, 0.05) + 1e-9, (a, b, m, r)
        assert exact_bootstrap(diffs, 0.95) - 1e-9 <= r["diff_high"] \
            <= exact_bootstrap(diffs, 0.99) + 1e-9, (a, b, m, r)
    # problems resampled with both their values: a constant difference has no spread
    r = got[("conf_agg", "agg_prompted", 2)]
    assert r["diff"] == r["diff_low"] == r["diff_high"] == pytest.approx(0.5)
    q = {c[0:2]: c[2] for c in COMPARISONS}
    assert r["question"] == q[("conf_agg", "agg_prompted")]


def test_paired_differences_need_the_same_problems():
    by_method = {m: per_problem(m) for m in ("conf_agg", "agglm")}
    del by_method["agglm"][2]["d"]
    with pytest.raises(ValueError, match=r"conf_agg and agglm at m=2: problems differ "
                                         r"\(only in conf_agg: \['d'\]"):
        aggregator_differences(by_method, COMPARISONS, n_boot=100, seed=0)


def test_paired_table_in_the_summary(tmp_path):
    metrics = rows_for("X", MAJ, [(1, 0.45, 150, (-0.1, -0.3, 0.1)),
                                  (2, 0.56, 260, (0.01, -0.01, 0.03))])
    paired = [{"benchmark": "X", **r} for r in aggregator_differences(
        {m: per_problem(m) for m in ANSWERS}, COMPARISONS, n_boot=500, seed=0)]
    write_summary(metrics, tmp_path / "s.csv", tmp_path / "s.md", paired=paired,
                  paired_csv_path=tmp_path / "p.csv")
    md = (tmp_path / "s.md").read_text()
    assert md == summary_markdown(metrics, paired=paired)
    section = md.split("Paired differences between aggregators at the same m")[1]
    by = {(r["method"], r["baseline"], r["budget"]): r for r in paired}
    for (a, b), question in [(("conf_agg", "agg_prompted"), "value of training"),
                             (("conf_agg", "agglm"), "value of confidence")]:
        cells = " | ".join(
            f"{100 * by[(a, b, m)]['diff']:+.1f} [{100 * by[(a, b, m)]['diff_low']:+.1f}, "
            f"{100 * by[(a, b, m)]['diff_high']:+.1f}] "
            f"{verdict(by[(a, b, m)]['diff_low'], by[(a, b, m)]['diff_high'])}"
            for m in (1, 2))
        assert f"| {a} - {b} ({question}) | {cells} |" in section
    table = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert list(table[0]) == PAIRED_COLUMNS
    assert (tmp_path / "p.csv").read_text() == paired_csv(paired)
    assert {(r["method"], r["baseline"], int(r["budget"])) for r in table} == set(by)
    for r in table:
        want = by[(r["method"], r["baseline"], int(r["budget"]))]
        assert float(r["diff"]) == pytest.approx(want["diff"], abs=1e-6)
        assert r["verdict"] == verdict(want["diff_low"], want["diff_high"])
