"""Stage 4 report: the headline, the summary table and the plots (real PNGs whose
panels are counted from their pixels)."""

from __future__ import annotations

import csv
import io

import matplotlib.image as mpimg
import numpy as np
import pytest
from confagg.report import headline, metrics_table, plot, summary_markdown, write_summary


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


def rows_for(bench, majority, conf_agg, n=5):
    rows = []
    for method, points in (("majority", majority), ("conf_agg", conf_agg)):
        for b, a, t in points:
            rows.append({"benchmark": bench, "method": method, "budget": b, "accuracy": a,
                         "ci_low": max(0.0, a - 0.1), "ci_high": min(1.0, a + 0.1),
                         "mean_tokens": t, "n_problems": n})
    return rows


MAJ = [(1, 0.3, 100), (2, 0.4, 200), (4, 0.5, 400), (8, 0.55, 800)]


def test_headline_finds_the_smallest_matching_budget():
    rows = rows_for("X", MAJ, [(1, 0.45, 150), (2, 0.55, 260), (4, 0.6, 480)])
    assert headline(rows) == ("conf_agg with m=2 candidates reaches 55.0% against majority@8 "
                              "55.0%, at 0.33x its tokens (260 vs 800 per problem)")
    low = rows_for("X", MAJ, [(1, 0.2, 150), (2, 0.31, 260)])
    assert headline(low) == ("conf_agg does not reach majority@8 (55.0%); its best is 31.0% "
                             "at m=2")
    assert headline(rows_for("X", MAJ, [])) == ("conf_agg was not evaluated "
                                                "(evaluation.agg_methods)")


def test_summary_files(tmp_path):
    rows = rows_for("X", MAJ, [(1, 0.45, 150), (2, 0.56, 260)])
    rows += rows_for("Y", MAJ[:2], [(1, 0.1, 90)], n=3)
    rows.append({**rows[0], "method": "single", "budget": 1})  # listed first in the table
    write_summary(rows, tmp_path / "s.csv", tmp_path / "s.md")
    table = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert [(r["benchmark"], r["method"], r["budget"]) for r in table][:6] == [
        ("X", "single", "1"), ("X", "majority", "1"), ("X", "majority", "2"),
        ("X", "majority", "4"), ("X", "majority", "8"), ("X", "conf_agg", "1")]
    assert table[1] == {"benchmark": "X", "method": "majority", "budget": "1",
                        "accuracy": "0.3", "ci_low": "0.2", "ci_high": "0.4",
                        "mean_tokens": "100"}
    md = (tmp_path / "s.md").read_text()
    assert md == summary_markdown(rows)
    assert "## X (5 problems)" in md and "## Y (3 problems)" in md
    assert md.count("**Headline:**") == 2
    assert "| majority | 30.0 [20.0, 40.0] | 40.0 [30.0, 50.0] | 50.0 [40.0, 60.0] | " \
           "55.0 [45.0, 65.0] |" in md
    assert "| conf_agg | 45.0 [35.0, 55.0] | 56.0 [46.0, 66.0] |  |  |" in md
    assert "| conf_agg | 150 | 260 |  |  |" in md          # tokens table
    assert "conf_agg does not reach majority@2 (40.0%)" in md


def test_metrics_table_schema():
    t = metrics_table("X", [{k: v for k, v in r.items() if k != "benchmark"}
                            for r in rows_for("X", MAJ, [])])
    assert t.column_names == ["benchmark", "method", "budget", "accuracy", "ci_low", "ci_high",
                              "mean_tokens", "n_problems"]
    assert t.column("budget").to_pylist() == [1, 2, 4, 8]


@pytest.mark.parametrize("n_bench", [1, 2, 4])
def test_plots_have_one_panel_per_benchmark(tmp_path, n_bench):
    rows = [r for i in range(n_bench)
            for r in rows_for(f"bench{i}", MAJ, [(1, 0.45, 150), (2, 0.56, 260)])]
    for x in ("budget", "mean_tokens"):
        path = tmp_path / f"{x}.png"
        plot(rows, path, x=x)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert count_panels(path) == n_bench
    with pytest.raises(ValueError, match="x must be"):
        plot(rows, tmp_path / "bad.png", x="accuracy")
