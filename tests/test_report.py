"""Stage 4 report: the headline, the summary table and the plots (real PNGs whose
panels are counted from their pixels)."""

from __future__ import annotations

import csv
import io

import matplotlib.image as mpimg
import numpy as np
import pytest
from confagg.report import (
    headline,
    metrics_table,
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
