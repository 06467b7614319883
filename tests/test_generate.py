"""Stage 1 for real: vLLM on the CPU with the bundled model, through the Snakemake rules."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confagg.confidence import STAT_NAMES, trace_stats
from confagg.config import load_config
from confagg.generation import (
    check_model_path,
    generate_shard,
    grade_samples,
    merge_shards,
    rows_table,
)
from confagg.io import DataError, write_jsonl
from conftest import BASE_CONFIGS

# Killing a generate job through Snakemake and resuming it: tests/test_kill_resume.py.

MODEL = "smollm2-135m"
TRAIN = f"results/generate/{MODEL}/arith_train"


@pytest.fixture(scope="module")
def train_samples(pipeline, bundled_model):
    pipeline.run(f"{TRAIN}/samples.parquet")
    return pq.read_table(pipeline.path(f"{TRAIN}/samples.parquet"))


def test_samples_schema_and_invariants(train_samples, pipeline):
    t = train_samples
    window = load_config(*BASE_CONFIGS)["generation"]["confidence_window"]
    expected = {"problem_id", "sample_idx", "text", "final_text", "n_tokens", "finish_reason",
                "answer", "correct", "grade_status", "conf_mean", "conf_tail", "conf_bottom10",
                "conf_lowest_group", "token_conf", "cluster"}
    assert set(t.schema.names) == expected
    assert t.schema.field("token_conf").type == pa.list_(pa.float16())
    assert t.schema.field("sample_idx").type == pa.int32()
    rows = t.to_pylist()
    # tests/test_config.yaml: 6 problems x 4 samples, 2 shards
    assert len(rows) == 24
    assert len({(r["problem_id"], r["sample_idx"]) for r in rows}) == 24
    assert sorted({r["sample_idx"] for r in rows}) == [0, 1, 2, 3]
    for r in rows:
        assert len(r["token_conf"]) == r["n_tokens"] > 0
        assert all(math.isfinite(x) for x in r["token_conf"])
        for k in ("conf_mean", "conf_tail", "conf_bottom10", "conf_lowest_group"):
            assert math.isfinite(r[k]) and r[k] > 0
        # the statistics from the stored token confidences (float16: 3 significant digits)
        assert trace_stats(np.array(r["token_conf"], dtype=np.float64), window) == \
            pytest.approx({k: r[k] for k in STAT_NAMES}, rel=2e-3, abs=2e-3)
        assert r["conf_lowest_group"] <= r["conf_bottom10"] + 1e-9
        assert r["finish_reason"] in {"stop", "length"}
        assert r["n_tokens"] <= 48 and (r["finish_reason"] == "stop" or r["n_tokens"] == 48)
        assert r["grade_status"] in {"ok", "no_answer", "timeout", "error"}
        assert (r["answer"] is None) == (r["grade_status"] == "no_answer")
        assert (r["cluster"] == -1) == (r["answer"] is None)
        assert not (r["correct"] and r["grade_status"] != "ok")
    # the window fits the traces: most have several groups, so the four statistics differ
    longer = [r for r in rows if r["n_tokens"] > window]
    assert len(longer) > len(rows) / 2, [r["n_tokens"] for r in rows]
    assert sum(r["conf_bottom10"] != r["conf_mean"] for r in rows) > len(rows) / 2
    assert sum(r["conf_tail"] != r["conf_mean"] for r in rows) > len(rows) / 2
    # mean confidence recomputed from the stored float16 values
    r = rows[0]
    assert np.mean(np.array(r["token_conf"], dtype=np.float64)) == pytest.approx(
        r["conf_mean"], rel=2e-3)
    shards = sorted(p.name for p in pipeline.path(f"{TRAIN}/shards").iterdir())
    assert shards == ["0.parquet", "1.parquet"]
    summary = json.loads(pipeline.path(f"{TRAIN}/grade_summary.json").read_text())
    assert summary["samples"] == 24 and summary["correct"] == sum(x["correct"] for x in rows)


def test_generation_and_grading_logs_show_progress(train_samples, pipeline):
    """The shard's log moves per finished request (vLLM's bar: count, ETA, tokens/s), not
    once per batch; clustering reports its problems."""
    logs = pipeline.path(f"logs/generate/{MODEL}/arith_train")
    lines = (logs / "shard0.log").read_text().replace("\r", "\n").splitlines()
    bar = [x for x in lines if x.startswith("Processed prompts:")]
    assert any(re.search(r" \d+/\d+ \[.*<.*output: [\d.]+ toks/s", x) for x in bar), bar
    assert "cluster answers:" in (logs / "grade.log").read_text()


def test_grading_of_hand_written_samples(tmp_path):
    dataset = tmp_path / "d.jsonl"
    write_jsonl(dataset, [
        {"id": "half", "problem": "p", "answer": "0.5", "source": "t"},
        {"id": "hmmt", "problem": "p", "answer": r"\dfrac{4^{2024}}{\binom{4048}{2024}}-2",
         "source": "t"},
        {"id": "plain", "problem": "p", "answer": "12", "source": "t"},
        {"id": "ten", "problem": "p", "answer": "10", "source": "t"},
    ])
    texts = {("half", 0): r"So $x = \boxed{\frac{1}{2}}$.",
             ("half", 1): r"The answer is \boxed{0.25}.",
             ("hmmt", 0): r"\boxed{\frac{4^{2024}}{\binom{4048}{2024}} - 2}",
             ("hmmt", 1): r"\boxed{4^{2024}}",
             ("plain", 0): "I think it is twelve, so 12",   # no box: math-verify extracts 12
             ("plain", 1): "I cannot tell.",                # no answer at all
             # one equivalence cluster graded right, right, wrong (see split_by_verdict)
             ("ten", 0): r"\boxed{10\%}", ("ten", 1): r"\boxed{10}", ("ten", 2): r"\boxed{0.1}"}
    records = [{"problem_id": p, "sample_idx": i, "text": t, "final_text": t, "n_tokens": 3,
                "finish_reason": "length" if p == "plain" else "stop", "conf_mean": 1.0,
                "conf_tail": 1.0, "conf_bottom10": 1.0, "conf_lowest_group": 1.0,
                "token_conf": np.ones(3)} for (p, i), t in texts.items()]
    pq.write_table(rows_table(records), tmp_path / "merged.parquet")
    summary = grade_samples(merged_path=str(tmp_path / "merged.parquet"),
                            dataset_path=str(dataset), out_path=str(tmp_path / "s.parquet"),
                            workers=1, timeout_s=5)
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    got = {(r["problem_id"], r["sample_idx"]): (r["answer"], r["correct"], r["grade_status"])
           for r in rows}
    assert got[("half", 0)] == (r"\frac{1}{2}", True, "ok")
    assert got[("half", 1)] == ("0.25", False, "ok")
    assert got[("hmmt", 0)][1:] == (True, "ok")
    assert got[("hmmt", 1)][1:] == (False, "ok")
    assert got[("plain", 0)] == ("12", True, "ok")
    assert got[("plain", 1)] == (None, False, "no_answer")  # a length finish: no_answer
    assert summary["no_answer"] == 1 and summary["correct"] == 5
    # every cluster written holds one verdict, so no reader has to split it
    ten = [(r["cluster"], r["correct"]) for r in rows if r["problem_id"] == "ten"]
    assert ten[0][0] == ten[1][0] != ten[2][0] and [c for _, c in ten] == [True, True, False]


def _shard_table(pids, n, drop=None):
    recs = [{"problem_id": p, "sample_idx": i, "text": "t", "final_text": "t", "n_tokens": 1,
             "finish_reason": "stop", "conf_mean": 1.0, "conf_tail": 1.0, "conf_bottom10": 1.0,
             "conf_lowest_group": 1.0, "token_conf": np.ones(1)}
            for p in pids for i in range(n) if (p, i) != drop]
    return rows_table(recs)


def test_merge_names_the_problem_and_shard(tmp_path):
    dataset = tmp_path / "d.jsonl"
    write_jsonl(dataset, [{"id": p, "problem": "x", "answer": "1", "source": "t"}
                          for p in ("a", "b", "c")])
    pq.write_table(_shard_table(["a", "c"], 3), tmp_path / "0.parquet")
    pq.write_table(_shard_table(["b"], 3, drop=("b", 1)), tmp_path / "1.parquet")
    with pytest.raises(DataError) as err:
        merge_shards([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], str(dataset), 3,
                     str(tmp_path / "m.parquet"))
    assert str(err.value) == (f"{tmp_path / '1.parquet'}, field 'sample_idx': problem 'b' has "
                              "samples [0, 2], expected exactly 0..2")
    pq.write_table(_shard_table(["b"], 3), tmp_path / "1.parquet")
    assert merge_shards([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")],
                        str(dataset), 3, str(tmp_path / "m.parquet")) == 9
    assert pq.read_table(tmp_path / "m.parquet").column("problem_id").to_pylist() == \
        ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        merge_shards([str(tmp_path / "bad.parquet")], str(dataset), 3, str(tmp_path / "m.parquet"))


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="resources/models/nope: model folder not found"):
        check_model_path("resources/models/nope")
    check_model_path("Qwen/Qwen2.5-1.5B-Instruct")  # a Hub id passes through
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        generate_shard(dataset_path=str(tmp_path / "empty.jsonl"), out_path="x", progress_dir="y",
                       shard=0, n_shards=1, n=1, model_path="m", model_spec={}, vllm_cfg={},
                       sampling={}, conf_window=8, batch_problems=1)
    assert not (tmp_path / "y").exists()
