"""Stage 2 on hand-built samples with known answers, then the real rules."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confagg import curation
from confagg.confidence import auroc
from confagg.config import load_config
from confagg.decontam import ngrams, normalize
from confagg.io import DataError
from confagg.prompts import ConfidenceCalibration
from conftest import BASE_CONFIGS


def write_samples(path, spec):
    """spec: {problem_id: [(answer, cluster, correct, conf), ...]}"""
    rows = []
    for pid, samples in spec.items():
        for i, (ans, cl, ok, conf) in enumerate(samples):
            rows.append({"problem_id": pid, "sample_idx": i, "final_text": f"{pid} says {ans}",
                         "answer": ans, "correct": ok, "cluster": cl, "n_tokens": 5,
                         "conf_mean": conf, "conf_tail": conf, "conf_bottom10": conf,
                         "conf_lowest_group": conf})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


# p1: three equivalent forms of 1/2 (one cluster) beat "3"; the weighted vote agrees.
# p2: majority "7" is wrong, but the confident minority "8" is right.
# p3: no answers at all.
SPEC = {
    "p1": [("1/2", 0, True, 1.0), ("0.5", 0, True, 1.0), (r"\frac{1}{2}", 0, True, 1.0),
           ("3", 1, False, 2.0)],
    "p2": [("7", 0, False, 1.0), ("7", 0, False, 1.0), ("7", 0, False, 1.0),
           ("8", 1, True, 5.0)],
    "p3": [(None, -1, False, 1.0)] * 4,
}


def test_problem_stats_by_hand(tmp_path):
    samples = curation.load_samples(write_samples(tmp_path / "s.parquet", SPEC), "mean")
    stats = {r["problem_id"]: r for r in curation.problem_stats(samples).to_pylist()}
    p1, p2, p3 = stats["p1"], stats["p2"], stats["p3"]
    assert (p1["n_samples"], p1["n_correct"], p1["pass_rate"]) == (4, 3, 0.75)
    assert p1["majority_answer"] == "1/2" and p1["majority_correct"]
    assert p1["n_distinct_answers"] == 2
    assert p2["majority_answer"] == "7" and not p2["majority_correct"]
    assert p2["weighted_answer"] == "8" and p2["weighted_correct"]   # 5.0 > 3 x 1.0
    assert p3["majority_answer"] is None and not p3["majority_correct"]
    assert p3["n_no_answer"] == 4 and p3["n_distinct_answers"] == 0


def test_a_cluster_holding_two_verdicts_is_refused_with_its_row(tmp_path):
    """grade_samples writes clusters of one verdict (confagg.grading.split_by_verdict):
    equivalence joins "1" and the restated "3 - 2", which grading tells apart. A samples
    file whose cluster still mixes them (one written before that) is named, not
    silently counted: a set holding "1" alone would be labelled by the cluster's
    majority verdict."""
    mixed = {"p": [("1", 0, True, 1.0), ("3 - 2", 0, False, 1.0), ("3 - 2", 0, False, 1.0),
                   ("5", 1, False, 1.0)]}
    path = write_samples(tmp_path / "mixed.parquet", mixed)
    with pytest.raises(DataError, match=r"mixed.parquet, row 2, field 'cluster': problem 'p' "
                                        r"has right and wrong answers in cluster 0"):
        curation.load_samples(path, "mean")
    split = {"p": [("1", 0, True, 1.0), ("3 - 2", 2, False, 1.0), ("3 - 2", 2, False, 1.0),
                   ("5", 1, False, 1.0)]}
    samples = curation.load_samples(write_samples(tmp_path / "s.parquet", split), "mean")
    stats = curation.problem_stats(samples).to_pylist()[0]
    assert stats["majority_answer"] == "3 - 2" and not stats["majority_correct"]
    assert stats["n_distinct_answers"] == 3
    counts = {}
    sets = curation.build_sets(samples, k_values=[1], sets_per_problem=4, easy_ratio=1e3,
                               seed=0, on_too_few="error", path="s", counts=counts)
    easy = [s["candidate_ids"] for s in sets if s["difficulty"] == "easy"]
    assert easy == [[0]] and counts[1]["easy_available"] == 1 and counts[1]["hard"] == 3


def test_missing_column_names_file_and_column(tmp_path):
    pq.write_table(pa.table({"problem_id": ["a"], "sample_idx": [0]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as err:
        curation.load_samples(str(tmp_path / "bad.parquet"), "mean")
    assert str(tmp_path / "bad.parquet") in str(err.value) and "field 'final_text'" in str(err.value)


def test_duplicate_sample_and_missing_dataset_problem_are_named(tmp_path):
    dup = write_samples(tmp_path / "dup.parquet", {"a": SPEC["p1"][:2]})
    t = pq.read_table(dup).to_pylist()
    t[1]["sample_idx"] = 0
    pq.write_table(pa.Table.from_pylist(t), dup)
    with pytest.raises(DataError, match=r"dup.parquet, row 2, field 'sample_idx': problem 'a' "
                                        r"has sample_idx 0 twice"):
        curation.load_samples(dup, "mean")
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "p1", "problem": "Half?", "answer": "1/2"}\n'
                    '{"id": "p2", "problem": "Seven?"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, row 2, field 'answer': missing value"):
        curation.load_problems(str(data))
    data.write_text('{"id": "p1", "problem": "Half?", "answer": "1/2"}\n')
    samples = curation.load_samples(write_samples(tmp_path / "s.parquet", SPEC), "mean")
    sets = curation.build_sets(samples, k_values=[1], sets_per_problem=1, easy_ratio=1e3, seed=0,
                               on_too_few="error", path="s")
    cal = ConfidenceCalibration.fit([1.0, 2.0], "conf_mean")
    with pytest.raises(DataError, match=r"d.jsonl, field 'id': 2 problem\(s\) of the samples "
                                        r"are not in the dataset, e.g. \['p2', 'p3'\]"):
        curation.make_rows(sets, samples, curation.load_problems(str(data)), cal,
                           show_confidence=True, scale="percentile", token_budget=None,
                           tokenizer=None, dataset_path=str(data))


def test_missing_confidence_is_shown_as_not_available(tmp_path):
    spec = {"p": [("4", 0, True, float("nan")), ("4", 0, True, 3.0)]}
    samples = curation.load_samples(write_samples(tmp_path / "s.parquet", spec), "mean")
    sets = [{"problem_id": "p", "k": 2, "candidate_ids": [0, 1], "difficulty": "easy",
             "any_correct": True}]
    cal = ConfidenceCalibration.fit([1.0, 2.0, 3.0, 5.0], "conf_mean")
    (row,) = curation.make_rows(sets, samples, {"p": {"problem": "2+2?", "answer": 4}}, cal,
                                show_confidence=True, scale="percentile", token_budget=None,
                                tokenizer=None)
    assert row["confidences"] == [None, pytest.approx(200 / 3, abs=0.1)]  # 0.1-point grid
    assert row["answer"] == "4"                                   # a string for the trainers
    assert "Candidate solution 1 (confidence: not available)" in row["prompt"]
    assert "Candidate solution 2 (confidence: 67/100)" in row["prompt"]
    json.dumps(row, allow_nan=False)                              # valid JSON, no NaN


def many_problems(n_problems=20, n=8, seed=0):
    """Problems with a known share of right samples, answers as clusters 0 (right) / 1."""
    rng = random.Random(seed)
    spec = {}
    for p in range(n_problems):
        acc = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9])
        rows = []
        for _ in range(n):
            ok = rng.random() < acc
            rows.append(("12" if ok else "13", 0 if ok else 1, ok, rng.uniform(0, 10)))
        spec[f"q{p:02d}"] = rows
    return spec


def test_sets_labels_mix_and_determinism(tmp_path):
    path = write_samples(tmp_path / "s.parquet", many_problems())
    samples = curation.load_samples(path, "tail")
    kw = dict(k_values=[1, 2, 4], sets_per_problem=6, easy_ratio=0.5, seed=3, on_too_few="error",
              path=path)
    counts = {}
    sets = curation.build_sets(samples, **kw, counts=counts)
    assert sets == curation.build_sets(samples, **kw)            # same seed, same sets
    assert sets != curation.build_sets(samples, **{**kw, "seed": 4})
    for k in (1, 2, 4):
        ks = [s for s in sets if s["k"] == k]
        hard = [s for s in ks if s["difficulty"] == "hard"]
        easy = [s for s in ks if s["difficulty"] == "easy"]
        assert len(easy) == round(0.5 * len(hard))                # the mixing ratio
        assert counts[k]["hard"] == len(hard)
        assert counts[k]["drawn"] == counts[k]["hard"] + counts[k]["easy_available"]
        assert counts[k]["skipped_problems"] == 0
        keys = [(s["problem_id"], tuple(s["candidate_ids"])) for s in ks]
        assert len(keys) == len(set(keys))                         # no duplicate sets
        # easy sets spread over problems: as many distinct problems as possible
        everything = curation.build_sets(samples, **{**kw, "easy_ratio": 1000.0, "k_values": [k]})
        with_easy = {s["problem_id"] for s in everything if s["difficulty"] == "easy"}
        assert len({s["problem_id"] for s in easy}) == min(len(easy), len(with_easy))
    for s in sets:
        g = samples[s["problem_id"]]
        votes = np.bincount(g["cluster"][s["candidate_ids"]], minlength=2)
        majority_right = votes[0] > votes[1] or (votes[0] == votes[1] and
                                                 g["cluster"][s["candidate_ids"][0]] == 0)
        assert s["difficulty"] == ("easy" if majority_right else "hard"), s
        assert len(s["candidate_ids"]) == s["k"]


def test_too_few_samples_error_or_skip(tmp_path):
    path = write_samples(tmp_path / "s.parquet", {"a": SPEC["p2"], "b": SPEC["p2"][:1]})
    samples = curation.load_samples(path, "mean")
    with pytest.raises(DataError, match=r"problem 'b' has 1 samples, fewer than k=2"):
        curation.build_sets(samples, k_values=[2], sets_per_problem=2, easy_ratio=1.0, seed=0,
                            on_too_few="error", path=path)
    sets = curation.build_sets(samples, k_values=[2], sets_per_problem=2, easy_ratio=1.0,
                               seed=0, on_too_few="skip", path=path)
    assert {s["problem_id"] for s in sets} == {"a"}


def test_rows_split_and_prompts(tmp_path):
    path = write_samples(tmp_path / "s.parquet", many_problems(n_problems=10))
    samples = curation.load_samples(path, "mean")
    sets = curation.build_sets(samples, k_values=[2], sets_per_problem=4, easy_ratio=1.0,
                               seed=0, on_too_few="error", path=path)
    problems = {pid: {"id": pid, "problem": f"Problem {pid}?", "answer": "12"} for pid in samples}
    cal = ConfidenceCalibration.fit(np.concatenate([g["conf"] for g in samples.values()]),
                                    "conf_mean")
    rows = curation.make_rows(sets, samples, problems, cal, show_confidence=True,
                              scale="percentile", token_budget=None, tokenizer=None)
    val = curation.split_problems(list(samples), 0.2, seed=0)
    assert len(val) == 2
    train_ids = {r["problem_id"] for r in rows if r["problem_id"] not in val}
    assert not train_ids & val                                   # no leakage
    for r in rows:
        assert set(r) == {"prompt", "prompt_noconf", "answer", "problem_id", "k", "difficulty",
                          "candidate_ids", "confidences"}
        assert isinstance(r["prompt"], str) and r["answer"] == "12"
        assert len(r["candidate_ids"]) == len(r["confidences"]) == 2
        g = samples[r["problem_id"]]
        for j, (sid, shown) in enumerate(zip(r["candidate_ids"], r["confidences"])):
            assert f"Candidate solution {j + 1} (confidence: {shown:.0f}/100)" in r["prompt"]
            assert g["final_text"][sid] in r["prompt"]
            assert 0 <= shown <= 100
            # the AggLM baseline's prompt: the same candidates, no confidence
            assert f"Candidate solution {j + 1}:\n{g['final_text'][sid]}" in r["prompt_noconf"]
        assert "confidence" not in r["prompt_noconf"]


def test_no_sets_names_the_real_cause(tmp_path):
    k_values = [1, 2]
    kw = dict(k_values=k_values, sets_per_problem=4, easy_ratio=0.5, seed=0, on_too_few="skip")
    # every sample right: sets are drawn, all easy, so none is kept
    right = write_samples(tmp_path / "right.parquet",
                          {p: [("4", 0, True, 1.0)] * 4 for p in ("a", "b")})
    counts = {}
    assert curation.build_sets(curation.load_samples(right, "mean"), path=right, counts=counts,
                               **kw) == []
    msg = curation.no_sets_message(right, counts, k_values, 2)
    assert msg.startswith(f"no aggregation sets from {right}: none of the ")
    assert "is hard" in msg and "curation.easy_percent" in msg and "fewer samples" not in msg
    # one sample per problem, k >= 2 only: too few samples is the cause
    few = write_samples(tmp_path / "few.parquet", {p: [("4", 0, False, 1.0)] for p in "ab"})
    counts = {}
    assert curation.build_sets(curation.load_samples(few, "mean"), path=few, counts=counts,
                               **{**kw, "k_values": [2, 3]}) == []
    assert curation.no_sets_message(few, counts, [2, 3], 2) == (
        f"no aggregation sets from {few}: every problem has fewer samples than each k in "
        f"curation.k_values=[2, 3]")
    assert "no problem left" in curation.no_sets_message(few, {}, [2], 0)


def test_a_val_fraction_that_empties_training_names_the_key(tmp_path):
    path = write_samples(tmp_path / "s.parquet", many_problems(n_problems=2))
    samples = curation.load_samples(path, "mean")
    sets = curation.build_sets(samples, k_values=[1], sets_per_problem=4, easy_ratio=1.0,
                               seed=0, on_too_few="error", path=path)
    val = curation.split_problems(list(samples), 0.9, seed=0)    # round(1.8) = both
    with pytest.raises(DataError, match=r"s.parquet, field 'problem_id': "
                                        r"curation.val_fraction=0.9 puts all 2 problem\(s\) "
                                        r"with aggregation sets into validation"):
        curation.check_split(sets, val, 0.9, path)
    curation.check_split(sets, curation.split_problems(list(samples), 0.2, seed=0), 0.2, path)


def test_contaminated_problems_are_left_out(tmp_path):
    samples = curation.load_samples(write_samples(tmp_path / "s.parquet", SPEC), "mean")
    report = tmp_path / "d.json"
    report.write_text(json.dumps({"dropped": [{"id": "p2"}, {"id": "not-sampled"}]}))
    assert curation.drop_contaminated(samples, str(report)) == ["p2"]
    assert set(samples) == {"p1", "p3"}
    report.write_text("{}")
    with pytest.raises(DataError, match=r"d.json, field 'dropped': not a decontamination"):
        curation.drop_contaminated(samples, str(report))


def test_trace_report_counts_short_traces_and_ranks_each_statistic(tmp_path):
    # conf_tail ranks the right samples first (AUROC 1), conf_mean last (0), the
    # others are constant (0.5); two of four traces are shorter than the window of 10
    rows = [{"problem_id": "p", "sample_idx": i, "n_tokens": n, "correct": ok,
             "conf_mean": -float(ok) + i / 10, "conf_tail": float(ok) + i / 10,
             "conf_bottom10": 1.0, "conf_lowest_group": 1.0}
            for i, (n, ok) in enumerate([(4, True), (12, False), (9, True), (30, False)])]
    rows.append({**rows[0], "problem_id": "gone", "n_tokens": 1})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    rep = curation.trace_report(str(tmp_path / "s.parquet"), 10, {"p"})
    assert rep["samples"] == 4 and rep["correct"] == 2 and rep["window"] == 10
    assert rep["shorter_than_window"] == 0.5
    assert rep["auroc"] == {"conf_mean": 0.0, "conf_tail": 1.0, "conf_bottom10": 0.5,
                            "conf_lowest_group": 0.5}
    assert rep["bottom10_differs_from_mean"] == 1.0
    md = curation.report_markdown({"sets": 0, "problems": 0, "train_rows": 0, "val_rows": 0,
                                   "val_problems": 0, "by_k": {}, "prompt_tokens": None,
                                   "prompt_tokens_by_k": {}, "decontaminated_problems": ["x"],
                                   "traces": rep})
    assert "50.0% of the traces are shorter than one window of 10 tokens" in md
    assert "| conf_tail | 1.000 |" in md and "1 training problem(s) overlap" in md


def test_curation_rules_on_the_real_pipeline(pipeline, bundled_model):
    base = "results/curate/smollm2-135m/arith_train"
    pipeline.run(f"{base}/train.jsonl", f"{base}/problems.parquet")
    samples = pq.read_table(pipeline.path("results/generate/smollm2-135m/arith_train/"
                                          "samples.parquet")).to_pylist()
    train = [json.loads(x) for x in pipeline.path(f"{base}/train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in pipeline.path(f"{base}/val.jsonl").read_text().splitlines()]
    assert train and val
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in val}
    assert {r["k"] for r in train + val} <= {1, 2}
    rep = json.loads(pipeline.path(f"{base}/curate_report.json").read_text())
    assert rep["train_rows"] == len(train) and rep["val_rows"] == len(val)
    assert rep["prompt_tokens"]["max"] <= 512                      # the test config's budget
    for b in rep["by_k"].values():
        # all hard sets, easy sets 50% of them (fewer only when fewer exist)
        mix = b["before_mix"]
        assert b["sets"] == b["hard"] + b["easy"] and b["hard"] == mix["hard"]
        assert b["easy"] == min(round(0.5 * b["hard"]), mix["easy_available"])
    # k=1 draws every sample (4 per problem, sets_per_problem 4): recount its sets from
    # the samples themselves (a single sample's set is easy when it is right)
    pool = [s for s in samples if s["problem_id"] not in rep["decontaminated_problems"]]
    right = sum(s["correct"] for s in pool)
    assert rep["by_k"]["1"]["before_mix"]["easy_available"] == right
    assert rep["by_k"]["1"]["before_mix"]["hard"] == len(pool) - right
    assert rep["by_k"]["1"]["easy"] == min(round(0.5 * (len(pool) - right)), right)
    problems = pq.read_table(pipeline.path(f"{base}/problems.parquet")).to_pylist()
    assert len(problems) == 6 and all(p["n_samples"] == 4 for p in problems)
    cal = json.loads(pipeline.path(f"{base}/calibration.json").read_text())
    assert cal["metric"] == "conf_bottom10" and cal["n"] == 24
    md = pipeline.path(f"{base}/curate_report.md").read_text()
    for k, b in rep["by_k"].items():
        assert f"| {k} | {b['sets']} | {b['hard']} | {b['easy']} |" in md
    # the table of sets matches the JSONL rows, and each row's candidates are real samples
    sets = pq.read_table(pipeline.path(f"{base}/sets.parquet")).to_pylist()
    assert len(sets) == len(train) + len(val)
    assert sorted((s["problem_id"], s["split"], tuple(s["candidate_ids"])) for s in sets) == \
        sorted([(r["problem_id"], "train", tuple(r["candidate_ids"])) for r in train]
               + [(r["problem_id"], "val", tuple(r["candidate_ids"])) for r in val])
    by_id = {(s["problem_id"], s["sample_idx"]): s for s in samples}
    for r in train + val:
        for j, (sid, shown) in enumerate(zip(r["candidate_ids"], r["confidences"])):
            final = by_id[(r["problem_id"], sid)]["final_text"].strip()
            label = "not available" if shown is None else f"{shown:.0f}/100"
            assert f"Candidate solution {j + 1} (confidence: {label}):\n" in r["prompt"]
            # whole, or shortened from the front with its ending kept
            assert final in r["prompt"] or final[-40:] in r["prompt"]
            assert f"Candidate solution {j + 1}:\n" in r["prompt_noconf"]
            assert final in r["prompt_noconf"] or final[-40:] in r["prompt_noconf"]
        assert "confidence" not in r["prompt_noconf"]
    # the majority's correctness from problems.parquet agrees with the samples' votes
    for p in problems:
        mine = [s for s in samples if s["problem_id"] == p["problem_id"]]
        assert p["n_correct"] == sum(s["correct"] for s in mine)

    # decontamination: the rule compared the training set with the benchmark, and no
    # benchmark problem (or 8 of its words in a row) is in any training or validation row
    decon = json.loads(pipeline.path(
        "results/curate/decontamination/arith_train.json").read_text())
    assert decon["benchmarks"] == {"arith_test": 4} and decon["train_problems"] == 6
    assert rep["decontaminated_problems"] == sorted(d["id"] for d in decon["dropped"])
    bench = [json.loads(x)["problem"] for x in
             pipeline.path("resources/datasets/arith_test.jsonl").read_text().splitlines()]
    dataset = {json.loads(x)["id"]: json.loads(x)["problem"] for x in
               pipeline.path("resources/datasets/arith_train.jsonl").read_text().splitlines()}
    bench_grams = {g for b in bench for g in ngrams(b, 8)}
    for r in train + val:
        assert not any(b in r["prompt"] for b in bench), r["problem_id"]
        problem = dataset[r["problem_id"]]
        assert f"Problem:\n{problem}\n" in r["prompt"]
        assert normalize(problem) not in {normalize(b) for b in bench}
        assert not set(ngrams(problem, 8)) & bench_grams
    # confidence: the share of traces shorter than one window, and each statistic's AUROC
    window = load_config(*BASE_CONFIGS)["generation"]["confidence_window"]
    tr = rep["traces"]
    assert tr["window"] == window and tr["samples"] == len(pool)
    assert tr["shorter_than_window"] == pytest.approx(
        np.mean([s["n_tokens"] < window for s in pool]))
    assert set(tr["auroc"]) == {"conf_mean", "conf_tail", "conf_bottom10", "conf_lowest_group"}
    n_right = sum(s["correct"] for s in pool)
    for col, a in tr["auroc"].items():
        if 0 < n_right < len(pool):
            assert a == pytest.approx(auroc([s[col] for s in pool], [s["correct"] for s in pool]))
            assert f"| {col} | {a:.3f} |" in md
        else:
            assert a is None
    assert f"shorter than one window of {window} tokens" in md


def test_evaluation_keeps_answers_only_for_the_scale_they_were_made_with(tmp_path):
    """The aggregate job's saved answers are keyed by the confidence scale: answers made
    with percentiles are reused for percentiles and never for raw confidences (a raw run
    needs the engine, here a missing model folder, instead of the saved answers)."""
    from confagg.aggregate import AGG_SCHEMA, agg_sets, progress_fingerprint, run_aggregation
    from confagg.generation import ShardProgress

    samples_path = write_samples(tmp_path / "s.parquet", {"p1": SPEC["p1"]})
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "p1", "problem": "Half?", "answer": "1/2"}\n')
    cal = tmp_path / "cal.json"
    ConfidenceCalibration.fit([1.0, 2.0], "conf_mean").to_json(cal)
    ev = {"agg_budgets": [1], "agg_sets": 1, "agg_samples": 1, "agg_temperature": 1.0,
          "agg_top_p": 1.0, "agg_top_k": -1, "agg_max_tokens": 8, "agg_batch_sets": 1,
          "seed": 0}
    grading = {"workers": 1, "timeout_s": 5}
    model = str(tmp_path / "no-model")
    sets = agg_sets(curation.load_samples(samples_path, "mean"), [1], 1, 0)
    progress_dir = str(tmp_path / "progress")
    kw = dict(samples_path=samples_path, dataset_path=str(data), calibration_path=str(cal),
              model_path=model, vllm_cfg={}, evaluation=ev, show_confidence=True,
              token_budget=None, grading=grading, progress_dir=progress_dir)
    # boxed-only extraction (the grading default) leaves the fingerprint's settings as is
    fp = progress_fingerprint(model_path=model, evaluation=ev,
                              show_confidence=True, token_budget=None,
                              calibration_path=str(cal), sets=sets,
                              confidence_scale="percentile")
    rows = [{"problem_id": s["problem_id"], "budget": 1, "set_idx": s["set_idx"],
             "candidate_ids": s["candidate_ids"], "agg_idx": 0, "text": "\\boxed{1/2}",
             "answer": "1/2", "correct": True, "grade_status": "ok", "finish_reason": "stop",
             "agg_tokens": 5, "solver_tokens": 5} for s in sets]

    def saved():
        ShardProgress(progress_dir, fp).write(pa.Table.from_pylist(rows, schema=AGG_SCHEMA))

    saved()
    assert run_aggregation(out_path=str(tmp_path / "pct.parquet"), confidence_scale="percentile",
                           **kw) == len(rows)
    saved()
    with pytest.raises(FileNotFoundError, match="no-model: model folder not found"):
        run_aggregation(out_path=str(tmp_path / "raw.parquet"), confidence_scale="raw", **kw)
