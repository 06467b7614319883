"""`make bench` in its quick mode (small sizes, one run, no vLLM engine): every figure
is in bench.json with a sane type and value. No timing thresholds: speed is the
benchmark's business, not the tests'."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO

from bench import baselines, common, data


def test_quick_bench_reports_every_figure(tmp_path, shared_data):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CONFAGG_BENCH_DATA": str(shared_data)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == set(common.TARGETS)
    assert report["mode"] == "quick" and report["runs"] == 1

    # generation needs the engine: skipped in quick mode, and said so
    assert figures["gen_overhead_ratio"] is None and "generation" in report["skipped"]
    assert report["passed"]["gen_overhead_ratio"] is None

    for name in ("confidence_speedup", "grading_speedup", "eval_seconds"):
        assert isinstance(figures[name], float) and math.isfinite(figures[name])
        assert figures[name] > 0
    # the project's statistics and the reference loop compute the same numbers
    assert report["extra"]["confidence_max_abs_diff"] < 1e-9
    # the project's grader and naive math-verify agree on every sample
    assert figures["grading_agreement"] == 1.0 and report["passed"]["grading_agreement"]
    assert report["extra"]["grading_disagreements"] == []
    # float16 is 2 bytes a token before encoding; the list structure adds little
    assert 0.3 < figures["conf_bytes_per_token"] < 4.0
    assert report["extra"]["storage_tokens"] > 1000

    rss = figures["peak_rss_mb"]
    assert set(rss) == {"confidence", "grading", "evaluation", "storage"}
    assert all(20 < v["process"] < 20000 for v in rss.values())

    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["numpy"]
    assert len(report["raw"]["confidence"]["seconds"]["project"]) == 1
    for name in common.TARGETS:  # the printed table names every figure
        assert name in proc.stdout


def test_reference_loop_matches_the_project_on_vllms_layout():
    comps = data.synthetic_traces(6000, k=20, min_len=50, max_len=3000, seed=3)
    project = baselines.project_confidence(comps, 20, 1024)
    assert baselines._max_diff(project, baselines.reference_confidence(comps, 20, 1024)) < 1e-9
    assert baselines._max_diff(project, baselines.linear_loop_confidence(comps, 20, 1024)) < 1e-9


def test_grading_pool_repeats_answers_and_mixes_forms(shared_data, monkeypatch):
    monkeypatch.setattr(common, "SHARED_DATA", shared_data)
    golds = [r["answer"] for r in common.math500_rows(50)]
    items = data.grading_pool(golds, 16)
    assert len(items) == 50 * 16
    answers = [a for _, a in items]
    assert None in answers
    assert len(set(items)) < len(items) / 3  # many repeats
    assert any(a is not None and a != g and a.strip() != g.strip() for g, a in items)
    assert data.grading_pool(golds, 16) == items  # seeded


def test_checks_and_round_order():
    assert common.check("grading_speedup", 5.0) is True
    assert common.check("gen_overhead_ratio", 1.2) is False
    assert common.check("eval_seconds", 3.0) is None
    assert common.check("confidence_speedup", None) is None
    orders = [common.rounds_order(["a", "b", "c"], r) for r in range(3)]
    assert [o[0] for o in orders] == ["a", "b", "c"]
