"""Which jobs a changed config value reruns, as Snakemake itself reports it.

The reference is a complete run (`rule all`) of the embedded default (config.yaml +
profiles/local/embedded.yaml) at the sizes of the tiny test overlay
(tests/test_config.yaml): the session's pipeline work directory, which the stage
tests fill; `all` here builds whatever they left out (everything, when this file
runs alone). Each case adds one more overlay with one changed value and asks the
real CLI, without running anything: `snakemake -n` (the job-count table),
`--summary` (per output: status `params changed`, plan `update pending`) and
`--list-changes params` (and, with no change, `--list-changes input` and `code`).

Snakemake 9.27.1's `--list-changes params` also lists the last output of every job
whose params were recorded, changed or not (`ParamsChange.__or__` keeps the files of
an empty change), so it is checked only against the no-change baseline; `--summary`'s
per-file status is exact. One test changes no config value but the grading rules (a
code constant named in grade_samples' params), by editing what Snakemake recorded.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import BASE_CONFIGS, job_counts

SOLVER = "smollm2-135m"
GEN = f"results/generate/{SOLVER}"
CUR = f"results/curate/{SOLVER}/arith_train"
EVAL = "results/evaluate/confagg-grpo/arith_test"
RUNS = ("confagg-grpo", "agglm-grpo")  # the confidence run and the AggLM baseline's
SHARDS = {f"{GEN}/{d}/shards/{s}.parquet" for d in ("arith_train", "arith_test")
          for s in (0, 1)}
CURATED = {f"{CUR}/{n}" for n in ("train.jsonl", "val.jsonl", "sets.parquet",
                                  "curate_report.json", "curate_report.md")}
PROMPTS = {f"results/train/{r}/prompts/{n}" for r in RUNS
           for n in ("train.jsonl", "train_mix.json")}
TRAINED = {f"results/train/{r}/{n}" for r in RUNS for n in ("model", "train_log.jsonl")} | {
    "results/report/training_curves.png"} | PROMPTS
REPORT = {f"results/report/{n}" for n in ("summary.csv", "summary.md", "paired_differences.csv",
                                          "accuracy_vs_samples.png", "accuracy_vs_tokens.png")}
METRICS = {f"{EVAL}/metrics.parquet", f"{EVAL}/paired.parquet"}
TRAINED_AGGS = {f"{EVAL}/aggregations/{m}.parquet" for m in ("conf_agg", "agglm")}
ALL_AGGS = TRAINED_AGGS | {f"{EVAL}/aggregations/agg_prompted.parquet"}
GENERATED = SHARDS | {f"{GEN}/{d}/{n}" for d in ("arith_train", "arith_test")
                      for n in ("merged.parquet", "samples.parquet", "grade_summary.json")}
STATS = {f"{CUR}/problems.parquet", f"{CUR}/calibration.json"}
DECON = {f"results/curate/decontamination/arith_train.{x}" for x in ("json", "md")}
OVERLAP = {"results/evaluate/overlap/arith_test.json"}

EVAL_JOBS = {"evaluate_benchmark": 1, "report": 1}
TRAIN_JOBS = {"training_prompts": 2, "train_trl": 2, "training_curves": 1}
CURATION_JOBS = {"aggregation_sets": 1, **TRAIN_JOBS, "aggregate": 2, **EVAL_JOBS}
SAMPLING_JOBS = {"generate": 4, "merge_generated": 2, "grade_samples": 2, "problem_stats": 1,
                 "calibrate_confidence": 1, "aggregation_sets": 1, **TRAIN_JOBS,
                 "aggregate": 3, **EVAL_JOBS}

# (overlay, jobs the dry run plans, outputs whose own params changed, outputs to remake)
CASES = {
    "evaluation.n_draws": ({"evaluation": {"n_draws": 77}}, EVAL_JOBS, METRICS,
                           METRICS | REPORT),
    "evaluation.agg_temperature": ({"evaluation": {"agg_temperature": 0.7}},
                                   {"aggregate": 3, **EVAL_JOBS}, ALL_AGGS,
                                   ALL_AGGS | METRICS | REPORT),
    "generation.top_p": ({"generation": {"top_p": 0.9}}, SAMPLING_JOBS, SHARDS,
                         GENERATED | STATS | CURATED | TRAINED | ALL_AGGS | METRICS | REPORT),
    "generation.temperature": ({"generation": {"temperature": 0.8}}, SAMPLING_JOBS, SHARDS,
                               GENERATED | STATS | CURATED | TRAINED | ALL_AGGS | METRICS
                               | REPORT),
    "curation.sets_per_problem": ({"curation": {"sets_per_problem": 3}}, CURATION_JOBS,
                                  CURATED, CURATED | TRAINED | TRAINED_AGGS | METRICS | REPORT),
    "curation.easy_percent": ({"curation": {"easy_percent": 25}}, CURATION_JOBS, CURATED,
                              CURATED | TRAINED | TRAINED_AGGS | METRICS | REPORT),
    # The prompt cap reruns the draw; TRL sees it only through the drawn file.
    "training.max_prompts": ({"training": {"max_prompts": 2}},
                             {**TRAIN_JOBS, "aggregate": 2, **EVAL_JOBS}, PROMPTS,
                             TRAINED | TRAINED_AGGS | METRICS | REPORT),
    # So does the easy share (the train split's draw only; validation keeps the curated mix).
    "training.easy_share": ({"training": {"easy_share": 0.5}},
                            {**TRAIN_JOBS, "aggregate": 2, **EVAL_JOBS}, PROMPTS,
                            TRAINED | TRAINED_AGGS | METRICS | REPORT),
    # The n-gram reruns decontamination, so everything downstream of the training
    # problems, and the benchmark's overlap check.
    "curation.decontamination_ngram": (
        {"curation": {"decontamination_ngram": 6}},
        {"decontaminate": 1, "benchmark_overlap": 1, **CURATION_JOBS}, DECON | OVERLAP,
        DECON | OVERLAP | CURATED | TRAINED | TRAINED_AGGS | METRICS | REPORT),
    # Naming the benchmarks cleaned against, unchanged from the default, changes nothing.
    "curation.decontaminate_against": ({"curation": {"decontaminate_against": ["arith_test"]}},
                                       {}, set(), set()),
    # An OpenRLHF-only setting does not reach the TRL trainer's params.
    "training.openrlhf.zero_stage": ({"training": {"openrlhf": {"zero_stage": 2}}}, {}, set(),
                                     set()),
    # Nor does a training key TRL never reads (only OpenRLHF bounds prompts by length).
    "training.max_prompt_tokens": ({"training": {"max_prompt_tokens": 4096}}, {}, set(), set()),
    # The learning-rate schedule retrains with TRL, and what reads the model.
    "training.lr_schedule": ({"training": {"lr_schedule": "constant"}},
                             {"train_trl": TRAIN_JOBS["train_trl"], "training_curves": 1,
                              "aggregate": len(TRAINED_AGGS), **EVAL_JOBS},
                             TRAINED - PROMPTS - {"results/report/training_curves.png"},
                             TRAINED - PROMPTS | TRAINED_AGGS | METRICS | REPORT),
    # The LoRA rank (LoRA is on in the test overlay) retrains, and what reads the model.
    "training.lora.rank": ({"training": {"lora": {"rank": 4}}},
                           {"train_trl": TRAIN_JOBS["train_trl"], "training_curves": 1,
                            "aggregate": len(TRAINED_AGGS), **EVAL_JOBS},
                           TRAINED - PROMPTS - {"results/report/training_curves.png"},
                           TRAINED - PROMPTS | TRAINED_AGGS | METRICS | REPORT),
}


def summary(output: str) -> dict[str, tuple[str, str]]:
    """`--summary` as {output file: (status, plan)}."""
    rows = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    for line in lines[start + 1:]:
        cols = line.split("\t")
        if len(cols) == 6:
            rows[cols[0]] = (cols[4], cols[5])
    return rows


def listed(output: str) -> set[str]:
    """The files `--list-changes` prints, one a line (Snakemake's notes excluded)."""
    return {line.strip() for line in output.splitlines()
            if line.startswith(("results/", "resources/"))}


@pytest.fixture(scope="module")
def finished(pipeline, bundled_model):
    """The session's pipeline after a complete `rule all`, and the no-change baseline of
    `--list-changes params`."""
    pipeline.run()
    return pipeline, listed(pipeline.run("--list-changes", "params").stdout)


def test_nothing_changed_reruns_nothing(finished):
    pipeline, _ = finished
    proc = pipeline.run("-n")
    assert "Nothing to be done (all requested files are present and up to date)." in \
        proc.stdout, proc.stdout[-3000:]
    rows = summary(pipeline.run("--summary").stdout)
    expected = (GENERATED | STATS | DECON | OVERLAP | CURATED | TRAINED | ALL_AGGS | METRICS
                | REPORT)
    assert expected <= set(rows)
    for path, (status, plan) in rows.items():
        assert plan == "no update", (path, status, plan)
        assert status in ("ok", "removed temp file"), (path, status)
    for kind in ("input", "code"):
        assert listed(pipeline.run("--list-changes", kind).stdout) == set(), kind


@pytest.mark.parametrize("case", list(CASES))
def test_a_changed_value_reruns_exactly_what_reads_it(finished, tmp_path, case):
    pipeline, params_baseline = finished
    data, jobs, params_changed, remade = CASES[case]
    extra = tmp_path / "change.yaml"
    extra.write_text(yaml.safe_dump(data))
    files = [*BASE_CONFIGS, extra]

    proc = pipeline.run("-n", configfiles=files)
    assert job_counts(proc.stdout) == jobs, proc.stdout[-4000:]

    rows = summary(pipeline.run("--summary", configfiles=files).stdout)
    assert {p for p, (status, _) in rows.items() if status == "params changed"} == \
        params_changed
    assert {p for p, (_, plan) in rows.items() if plan == "update pending"} == remade

    lc_params = listed(pipeline.run("--list-changes", "params", configfiles=files).stdout)
    assert params_changed <= lc_params
    assert lc_params - params_baseline <= params_changed


def test_samples_graded_under_an_older_grading_rule_are_graded_again(finished):
    """A change of verdict or clustering (confagg.grading.GRADING_RULES) reruns
    grade_samples and what reads its samples, as a changed param: code Snakemake cannot
    see (the library a script imports) must not leave samples graded the old way."""
    import base64
    import json

    from confagg.grading import GRADING_RULES

    pipeline, _ = finished
    outputs = [f"{GEN}/arith_train/{n}" for n in ("samples.parquet", "grade_summary.json")]
    records = {p: pipeline.path(".snakemake/metadata") / base64.urlsafe_b64encode(
        p.encode()).decode() for p in outputs}
    saved = {p: f.read_text() for p, f in records.items()}
    recorded = repr(GRADING_RULES)  # Snakemake records each param as its repr
    try:
        for p, f in records.items():
            meta = json.loads(saved[p])
            assert recorded in meta["params"], meta["params"]
            meta["params"] = [v for v in meta["params"] if v != recorded] + [repr("older rules")]
            f.write_text(json.dumps(meta))
        rows = summary(pipeline.run("--summary").stdout)
        assert {p for p, (status, _) in rows.items() if status == "params changed"} == \
            set(outputs)
        jobs = job_counts(pipeline.run("-n").stdout)
        assert jobs["grade_samples"] == 1 and jobs["aggregation_sets"] == 1, jobs
        assert jobs["train_trl"] == 2 and jobs["report"] == 1, jobs
    finally:
        for p, f in records.items():
            f.write_text(saved[p])
    assert "Nothing to be done" in pipeline.run("-n").stdout
