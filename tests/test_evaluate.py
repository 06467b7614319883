"""Stage 4 end to end on the session's test pipeline (real vLLM, math-verify and
Snakemake): aggregations, metrics, the report files and `snakemake --report`, which
jobs a changed setting reruns, resuming an aggregation from saved parts, and a
benchmark added by config alone; and, without the pipeline, the metrics script on
small hand-made files (paired differences for any aggregator method)."""

from __future__ import annotations

import csv
import json
import logging
import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from confagg.aggregate import AGG_SCHEMA, agg_sets, progress_fingerprint, run_aggregation
from confagg.config import load_config
from confagg.curation import load_samples
from confagg.estimators import MODEL_FREE, budgets_up_to
from confagg.generation import ShardProgress
from confagg.io import DataError
from confagg.methods import COMPARISONS
from confagg.report import PAIRED_COLUMNS, SUMMARY_COLUMNS
from conftest import BASE_CONFIGS, REPO, job_counts, load_script
from test_report import count_panels

AGGREGATORS = ["conf_agg", "agglm", "agg_prompted"]
REPORT = ["results/report/summary.csv", "results/report/summary.md",
          "results/report/paired_differences.csv",
          "results/report/accuracy_vs_samples.png", "results/report/accuracy_vs_tokens.png"]
RUN = "confagg-grpo"
AGG_DIR = f"results/evaluate/{RUN}/arith_test/aggregations"
SAMPLES = "results/generate/smollm2-135m/arith_test/samples.parquet"


def overlay(tmp_path, name, data) -> list:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return [*BASE_CONFIGS, path]


def check_report(pipeline, benchmarks: dict[str, int], aggregators=AGGREGATORS,
                 agg_budgets=(1, 2)) -> list[dict]:
    """Every method at every budget for every benchmark, sane numbers, real plots."""
    with open(pipeline.path("results/report/summary.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == SUMMARY_COLUMNS
    assert SUMMARY_COLUMNS[:7] == ["benchmark", "method", "budget", "accuracy", "ci_low",
                                   "ci_high", "mean_tokens"]
    assert {r["benchmark"] for r in rows} == set(benchmarks)
    for bench, n in benchmarks.items():
        got = {(r["method"], int(r["budget"])) for r in rows if r["benchmark"] == bench}
        want = {(m, b) for m in MODEL_FREE for b in budgets_up_to(n)}
        want |= {(m, b) for m in aggregators for b in agg_budgets if b <= n}
        assert got == want, bench
    for r in rows:
        acc, lo, hi = float(r["accuracy"]), float(r["ci_low"]), float(r["ci_high"])
        assert 0 <= lo <= acc + 1e-6 and acc <= hi + 1e-6 and hi <= 1, r
        assert float(r["mean_tokens"]) > 0, r
        if r["method"] in MODEL_FREE:
            assert r["diff_ref"] == r["diff"] == r["diff_low"] == r["diff_high"] == "", r
            continue
        # an aggregator against majority voting at the largest budget, on the same
        # problems: the mean of per-problem differences is the difference of the means
        n = benchmarks[r["benchmark"]]
        assert r["diff_ref"] == f"majority@{n}", r
        maj = next(float(q["accuracy"]) for q in rows if q["benchmark"] == r["benchmark"]
                   and q["method"] == "majority" and int(q["budget"]) == n)
        d, dlo, dhi = float(r["diff"]), float(r["diff_low"]), float(r["diff_high"])
        assert d == pytest.approx(acc - maj, abs=2e-6), r
        assert dlo <= d + 1e-6 and d <= dhi + 1e-6, r
    # aggregator against aggregator at the same m: every comparison whose two methods
    # were evaluated, at every aggregation budget
    text = pipeline.path("results/report/paired_differences.csv").read_text()
    assert text.splitlines()[0] == ",".join(PAIRED_COLUMNS)
    paired = list(csv.DictReader(text.splitlines()))
    want_pairs = {(bench, a, b, m) for bench, n in benchmarks.items()
                  for a, b, _ in COMPARISONS if a in aggregators and b in aggregators
                  for m in agg_budgets if m <= n}
    assert {(r["benchmark"], r["method"], r["baseline"], int(r["budget"]))
            for r in paired} == want_pairs
    acc = {(r["benchmark"], r["method"], r["budget"]): float(r["accuracy"]) for r in rows}
    for r in paired:
        # the mean of the per-problem differences is the difference of the accuracies
        d = float(r["diff"])
        assert d == pytest.approx(acc[(r["benchmark"], r["method"], r["budget"])]
                                  - acc[(r["benchmark"], r["baseline"], r["budget"])],
                                  abs=2e-6), r
        assert float(r["diff_low"]) <= d + 1e-6 <= float(r["diff_high"]) + 2e-6, r
    for name in ("accuracy_vs_samples", "accuracy_vs_tokens"):
        assert count_panels(pipeline.path(f"results/report/{name}.png")) == len(benchmarks)
    md = pipeline.path("results/report/summary.md").read_text()
    for bench, n in benchmarks.items():
        assert f"## {bench} (" in md
        assert f"majority@{n}" in md  # the headline compares with the largest budget
        assert f"Paired difference from majority@{n} (points):" in md
    if want_pairs:
        assert md.count("Paired differences between aggregators at the same m") == len(
            {p[0] for p in want_pairs})
    assert md.count("**Headline:**") == len(benchmarks)
    # every headline states its paired interval and the margin behind its verdict
    assert md.count("paired 95% intervals over") == len(benchmarks)
    assert all(re.search(r"[+-]\d+\.\d points \[[+-]\d+\.\d, [+-]\d+\.\d\]", line)
               for line in md.splitlines() if line.startswith("**Headline:**"))
    return rows


def test_evaluation_of_the_test_pipeline(pipeline, bundled_model):
    # the first run of the whole pipeline: two training runs (conf_agg's and AggLM's)
    pipeline.run(*REPORT, timeout=3600)
    rows = check_report(pipeline, {"arith_test": 8})
    # the headline comparisons: conf_agg against AggLM (a second training run) and
    # against the untrained base model
    assert {r["method"] for r in rows} >= {"conf_agg", "agglm", "agg_prompted"}
    assert pipeline.path("results/train/agglm-grpo/model/config.json").exists()
    agglm_prompts = [json.loads(x) for x in pipeline.path(
        "results/train/agglm-grpo/prompts/train.jsonl").read_text().splitlines()]
    conf_prompts = [json.loads(x) for x in pipeline.path(
        f"results/train/{RUN}/prompts/train.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["candidate_ids"]) for r in agglm_prompts] == \
        [(r["problem_id"], r["candidate_ids"]) for r in conf_prompts]
    assert all("confidence" not in r["prompt"] for r in agglm_prompts)
    assert all("(confidence: " in r["prompt"] for r in conf_prompts)
    # pass@1 is the graded pool's accuracy, at every budget
    grade = json.loads(pipeline.path("results/generate/smollm2-135m/arith_test/"
                                     "grade_summary.json").read_text())
    pass1 = [float(r["accuracy"]) for r in rows if r["method"] == "single"]
    assert pass1 == [pytest.approx(grade["accuracy"], abs=1e-6)] * 4
    # the oracle at m=8 (the whole pool) is the share of problems with a right sample
    samples = pq.read_table(pipeline.path(SAMPLES)).to_pandas()
    solved = samples.groupby("problem_id")["correct"].any().mean()
    oracle8 = next(r for r in rows if r["method"] == "oracle" and r["budget"] == "8")
    assert float(oracle8["accuracy"]) == pytest.approx(solved, abs=1e-6)

    # aggregations: 4 problems x 1 set x 2 answers per budget; candidates from the pool,
    # the same sets for every method, tokens from the pool's rows
    n_tokens = {(p, i): t for p, i, t in zip(samples.problem_id, samples.sample_idx,
                                              samples.n_tokens)}
    tables = {m: pq.read_table(pipeline.path(f"{AGG_DIR}/{m}.parquet")) for m in AGGREGATORS}
    for method, t in tables.items():
        assert t.schema.equals(AGG_SCHEMA), method
        d = t.to_pylist()
        assert len(d) == 4 * 1 * 2 * 2, method
        for r in d:
            assert len(r["candidate_ids"]) == r["budget"]
            assert r["solver_tokens"] == sum(n_tokens[(r["problem_id"], i)]
                                             for i in r["candidate_ids"])
            assert 0 < r["agg_tokens"] <= 24
            assert r["grade_status"] in ("ok", "no_answer", "timeout", "error")
            assert r["correct"] is False or r["grade_status"] == "ok"
        sets = sorted((r["problem_id"], r["budget"], r["candidate_ids"]) for r in d)
        assert sets == sorted((r["problem_id"], r["budget"], r["candidate_ids"])
                              for r in tables["conf_agg"].to_pylist())
    # the aggregators' rows of metrics.parquet are the means of those tables
    metrics = pq.read_table(pipeline.path(f"results/evaluate/{RUN}/arith_test/"
                                          "metrics.parquet")).to_pylist()
    for method, t in tables.items():
        df = t.to_pandas()
        for m in (1, 2):
            row = next(r for r in metrics if r["method"] == method and r["budget"] == m)
            sub = df[df.budget == m]
            assert row["accuracy"] == pytest.approx(sub.groupby("problem_id")["correct"]
                                                    .mean().mean())
            assert row["mean_tokens"] == pytest.approx((sub.agg_tokens + sub.solver_tokens)
                                                       .mean())
    assert not pipeline.path(f"results/.progress/evaluate/{RUN}").exists() or not any(
        pipeline.path(f"results/.progress/evaluate/{RUN}").rglob("*.parquet"))


def test_the_trainer_gets_every_core_and_vllm_jobs_keep_one(pipeline, bundled_model):
    """Snakemake exports OMP_NUM_THREADS = the job's threads (1 unless the rule says
    otherwise), which sizes torch's CPU thread pool. The TRL job must get every core the
    profile gives (a GRPO step takes 0.75x the time with both of 2); vLLM's jobs keep one
    (with two, its CPU worker starved the engine's other processes: 4x slower)."""
    pipeline.run(*REPORT)
    cores = yaml.safe_load((REPO / "profiles/local/config.yaml").read_text())["cores"]
    assert cores > 1
    threads = {f"logs/train/{r}/trl.log": cores for r in ("confagg-grpo", "agglm-grpo")}
    threads |= {f"logs/generate/smollm2-135m/arith_train/shard{s}.log": 1 for s in (0, 1)}
    threads |= {f"logs/evaluate/{RUN}/arith_test/aggregate_{m}.log": 1 for m in AGGREGATORS}
    for log, n in threads.items():
        text = pipeline.path(log).read_text()
        assert f" {n} threads (OMP_NUM_THREADS={n})" in text, (log, text[:2000])


def test_snakemake_report_holds_the_table_and_plots(pipeline, bundled_model, tmp_path):
    # every file marked for the report must exist, the training curves included
    pipeline.run(*REPORT, "results/report/training_curves.png")
    html = tmp_path / "report.html"
    pipeline.run("--report", str(html))
    text = html.read_text(errors="replace")
    for name in ("summary.csv", "summary.md", "paired_differences.csv",
                 "accuracy_vs_samples.png", "accuracy_vs_tokens.png", "training_curves.png"):
        assert name in text, name
    assert "Evaluation" in text
    assert "a solver samples n solutions per problem" in text  # Snakefile's report:


def test_a_changed_estimator_setting_reruns_only_the_cheap_jobs(pipeline, bundled_model,
                                                                tmp_path):
    pipeline.run(*REPORT)
    proc = pipeline.run("-n", *REPORT, configfiles=overlay(
        tmp_path, "draws.yaml", {"evaluation": {"n_draws": 77, "bootstrap": 123}}))
    assert job_counts(proc.stdout) == {"evaluate_benchmark": 1, "report": 1}
    proc = pipeline.run("-n", *REPORT, configfiles=overlay(
        tmp_path, "temp.yaml", {"evaluation": {"agg_temperature": 0.7}}))
    assert job_counts(proc.stdout) == {"aggregate": 3, "evaluate_benchmark": 1, "report": 1}


def test_aggregation_resumes_from_saved_parts(pipeline, bundled_model, tmp_path, caplog):
    """Finished parts are kept and skipped: with every part saved no engine is needed
    (the model path does not even exist); with half saved only the rest is to do."""
    pipeline.run(*REPORT)
    cfg = load_config(*BASE_CONFIGS)
    ev = cfg["evaluation"]
    full = pq.read_table(pipeline.path(f"{AGG_DIR}/conf_agg.parquet"))
    cal = pipeline.path("results/curate/smollm2-135m/arith_train/calibration.json")
    samples = load_samples(str(pipeline.path(SAMPLES)), cfg["curation"]["confidence_metric"])
    sets = agg_sets(samples, ev["agg_budgets"], ev["agg_sets"], ev["seed"])
    missing_model = str(tmp_path / "no-model")
    kw = dict(samples_path=str(pipeline.path(SAMPLES)),
              dataset_path=str(pipeline.path("resources/datasets/arith_test.jsonl")),
              calibration_path=str(cal), model_path=missing_model, vllm_cfg=cfg["vllm"],
              evaluation=ev, show_confidence=True,
              token_budget=cfg["curation"]["prompt_token_budget"], grading=cfg["grading"],
              progress_dir=str(tmp_path / "progress"))
    progress = ShardProgress(kw["progress_dir"], progress_fingerprint(
        model_path=missing_model, evaluation=ev, show_confidence=True,
        token_budget=kw["token_budget"], calibration_path=str(cal), sets=sets))
    budget = np.array(full.column("budget").to_pylist())
    progress.write(full.filter(budget == 1))
    caplog.set_level(logging.INFO, logger="confagg.aggregate")
    with pytest.raises(FileNotFoundError, match="no-model: model folder not found"):
        run_aggregation(out_path=str(tmp_path / "half.parquet"), **kw)
    assert "8 sets over budgets [1, 2]; 4 done before, 4 to do" in caplog.text
    assert len(progress.parts()) == 1  # the saved part survives the failure
    progress.write(full.filter(budget == 2))
    assert run_aggregation(out_path=str(tmp_path / "all.parquet"), **kw) == full.num_rows
    assert "8 done before, 0 to do" in caplog.text
    assert pq.read_table(tmp_path / "all.parquet").equals(full)
    assert not (tmp_path / "progress").exists()


def test_benchmark_added_by_config_alone(pipeline, bundled_model, tmp_path):
    """A local file with other field names flows through every stage, no code change."""
    bench = tmp_path / "my_bench.jsonl"
    bench.write_text("".join(json.dumps({"qid": f"q{i}", "question": q, "final": a}) + "\n"
                             for i, (q, a) in enumerate([("What is 3 + 4?", "7"),
                                                         ("What is 9 - 5?", "4"),
                                                         ("What is 2 * 3?", "6")])))
    # Only conf_agg here, to keep the test short; arith_test's aggregations are reused.
    files = overlay(tmp_path, "bench.yaml", {
        "datasets": {"my_bench": {"source": f"file:{bench}", "n_samples": 4,
                                  "fields": {"id": "qid", "problem": "question",
                                             "answer": "final"}}},
        "benchmarks": ["arith_test", "my_bench"],
        # training stays cleaned against arith_test alone, so nothing retrains;
        # my_bench's overlap with the training problems is checked instead
        "curation": {"decontaminate_against": ["arith_test"]},
        "evaluation": {"agg_methods": ["conf_agg"]}})
    try:
        planned = job_counts(pipeline.run("-n", *REPORT, configfiles=files).stdout)
        assert not {"decontaminate", "aggregation_sets", "train_trl"} & set(planned), planned
        assert planned["benchmark_overlap"] == 1 and planned["generate"] >= 1, planned
        pipeline.run(*REPORT, configfiles=files)
        norm = pipeline.path("resources/datasets/my_bench.jsonl").read_text().splitlines()
        assert json.loads(norm[0]) == {"id": "q0", "problem": "What is 3 + 4?", "answer": "7",
                                       "source": f"file:{bench}"}
        samples = pq.read_table(pipeline.path(
            "results/generate/smollm2-135m/my_bench/samples.parquet"))
        assert samples.num_rows == 3 * 4
        assert pipeline.path(f"results/evaluate/{RUN}/my_bench/aggregations/"
                             "conf_agg.parquet").exists()
        check_report(pipeline, {"arith_test": 8, "my_bench": 4}, aggregators=["conf_agg"])
        overlap = json.loads(pipeline.path("results/evaluate/overlap/my_bench.json").read_text())
        assert overlap["benchmark_problems"] == 3 and overlap["training_problems"] > 0
        assert "- my_bench: of 3 problems" in pipeline.path(
            "results/report/summary.md").read_text()
    finally:
        pipeline.run(*REPORT)  # the session's other tests expect the base report
    check_report(pipeline, {"arith_test": 8})


# ------------------------------------------------------------ the metrics script, no pipeline

def write_samples(path, pools: dict[str, list[tuple[int, bool, float]]]):
    """samples.parquet rows (problem, sample_idx, cluster, correct, conf_mean, tokens)."""
    rows = [{"problem_id": pid, "sample_idx": i, "answer": None if c < 0 else str(c),
             "correct": ok, "cluster": c, "n_tokens": 10, "conf_mean": conf}
            for pid, samples in pools.items() for i, (c, ok, conf) in enumerate(samples)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_aggregations(path, correct: dict[tuple[str, int], list[bool]], offset=0):
    rows = [{"problem_id": pid, "budget": m, "set_idx": 0,
             "candidate_ids": list(range(offset, offset + m)),
             "agg_idx": k, "text": "", "answer": "", "correct": ok, "grade_status": "ok",
             "finish_reason": "stop", "agg_tokens": 5, "solver_tokens": 10 * m}
            for (pid, m), oks in correct.items() for k, ok in enumerate(oks)]
    pq.write_table(pa.Table.from_pylist(rows, schema=AGG_SCHEMA), path)


def test_metrics_script_pairs_every_aggregator_with_majority(tmp_path, monkeypatch):
    script = load_script("evaluate_benchmark")
    monkeypatch.setattr(script, "setup_logging", lambda smk: logging.getLogger("test"))
    # majority@4: p right (3 of 4), q wrong (two wrong answers outvote one right), r a tie
    write_samples(tmp_path / "samples.parquet", {
        "p": [(0, True, 1.0), (0, True, 2.0), (0, True, 1.0), (1, False, 3.0)],
        "q": [(0, True, 1.0), (1, False, 1.0), (1, False, 1.0), (-1, False, 0.5)],
        "r": [(0, True, 1.0), (0, True, 1.0), (1, False, 2.0), (1, False, 2.0)]})
    agg = {("p", 1): [True, False], ("q", 1): [True, True], ("r", 1): [False, False],
           ("p", 2): [True, True], ("q", 2): [False, False], ("r", 2): [True, True]}
    write_aggregations(tmp_path / "a.parquet", agg)
    write_aggregations(tmp_path / "b.parquet", {k: [not v[0]] for k, v in agg.items()})
    smk = SimpleNamespace(
        input=SimpleNamespace(samples=str(tmp_path / "samples.parquet"),
                              aggregations=[str(tmp_path / "a.parquet"),
                                            str(tmp_path / "b.parquet")]),
        output=SimpleNamespace(metrics=str(tmp_path / "metrics.parquet"),
                               paired=str(tmp_path / "paired.parquet")),
        wildcards=SimpleNamespace(benchmark="B"),
        params=SimpleNamespace(metric="mean", methods=["conf_agg", "agglm"], n_draws=100,
                               bootstrap=200, seed=0))
    script.main(smk)
    rows = {(r["method"], r["budget"]): r
            for r in pq.read_table(tmp_path / "metrics.parquet").to_pylist()}
    majority = {"p": 1.0, "q": 0.0, "r": 0.5}
    assert rows[("majority", 4)]["accuracy"] == pytest.approx(1.5 / 3)
    for (method, m), by_problem in {
            ("conf_agg", 1): {"p": 0.5, "q": 1.0, "r": 0.0},
            ("conf_agg", 2): {"p": 1.0, "q": 0.0, "r": 1.0},
            ("agglm", 1): {"p": 0.0, "q": 0.0, "r": 1.0},
            ("agglm", 2): {"p": 0.0, "q": 1.0, "r": 0.0}}.items():
        r = rows[(method, m)]
        want = np.mean([by_problem[p] - majority[p] for p in majority])
        assert (r["diff_ref"], r["diff"]) == ("majority@4", pytest.approx(want)), (method, m)
        # the paired interval lies within the extreme per-problem differences
        diffs = [by_problem[p] - majority[p] for p in majority]
        assert min(diffs) <= r["diff_low"] <= r["diff"] <= r["diff_high"] <= max(diffs)
    assert all(rows[(m, b)]["diff_ref"] is None for m in MODEL_FREE for b in (1, 2, 4))
    # conf_agg against agglm at the same m, on the same problems
    paired = {r["budget"]: r for r in pq.read_table(tmp_path / "paired.parquet").to_pylist()}
    assert sorted(paired) == [1, 2]
    for m, want in ((1, np.mean([0.5, 1.0, -1.0])), (2, np.mean([1.0, -1.0, 1.0]))):
        r = paired[m]
        assert (r["benchmark"], r["method"], r["baseline"]) == ("B", "conf_agg", "agglm")
        assert r["diff"] == pytest.approx(want) and r["n_problems"] == 3
        assert r["diff_low"] <= r["diff"] <= r["diff_high"]

    # aggregations of other candidate sets cannot be paired: named
    write_aggregations(tmp_path / "b.parquet", {k: [not v[0]] for k, v in agg.items()},
                       offset=1)
    with pytest.raises(DataError, match=r"b\.parquet, field 'candidate_ids': its candidate "
                                        r"sets differ from those of .*a\.parquet"):
        script.main(smk)

    # aggregations of a problem the samples do not have: the wrong file, named
    write_aggregations(tmp_path / "b.parquet", {("zz", 1): [True], **agg})
    with pytest.raises(DataError, match=r"b\.parquet, field 'problem_id': 1 problem\(s\) "
                                        r"have no reference value to pair with, e\.g\. "
                                        r"\['zz'\]: not in .*samples\.parquet"):
        script.main(smk)
