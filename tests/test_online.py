"""DeepConf online early stopping (confagg.online): the logits processor on vLLM's own
interface classes, then the real engine with the bundled model, then the next stages
on an online pool."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from confagg.confidence import group_confidence, token_confidence, trace_stats
from confagg.config import load_config
from confagg.generation import (
    chat_prompts,
    completion_confidence,
    generate_shard,
    grade_samples,
    make_engine,
    merge_shards,
    sampling_params,
)
from confagg.io import DataError, write_jsonl
from confagg.online import (
    LOW_CONFIDENCE,
    DeepConfStopProcessor,
    extra_args,
    stopped_early,
    threshold,
)
from conftest import BASE_CONFIGS, VLLM_LOCK, _FileLock, run_snakemake
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

EOS = 7


def _added(index: int, thr: float | None, out_ids: list[int], window: int = 3, k: int = 4):
    args = extra_args(thr, window, k, EOS) if thr is not None else None
    return (index, SamplingParams(extra_args=args), [1, 2], out_ids)


def test_processor_tracks_window_and_forces_eos():
    proc = DeepConfStopProcessor(None, torch.device("cpu"), False)
    outs = {0: [], 1: [], 2: []}
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[
        _added(0, 1e9, outs[0]), _added(1, None, outs[1]), _added(2, -1e9, outs[2])], moved=[]))
    gen = torch.Generator().manual_seed(0)
    confs = []
    for step in range(4):
        logits = torch.randn(3, 50, generator=gen) * 3
        before = logits.clone()
        top = before.log_softmax(-1).topk(4).values.numpy()
        confs.append(token_confidence(top[0:1])[0])
        got = proc.apply(logits)
        # request 1 has no threshold, request 2 a threshold it never falls under
        assert torch.equal(got[1], before[1]) and torch.equal(got[2], before[2])
        if step < 2:  # fewer tokens than the window: never stopped
            assert torch.equal(got[0], before[0])
        else:  # a full window under a huge threshold: only EOS is left
            assert got[0, EOS] == 0 and torch.isinf(got[0]).sum() == 49
        for i in outs:
            outs[i].append(int(before[i].argmax()))
    # the processor's window is the confidence that confidence.py computes
    assert proc.tracked[0].confs == pytest.approx(confs, rel=1e-6)
    # a step whose token was discarded (no output token added) is overwritten next step
    proc.apply(torch.randn(3, 50, generator=gen))
    proc.apply(torch.randn(3, 50, generator=gen))
    assert len(proc.tracked[0].confs) == 5
    # moves and removals follow the batch
    proc.update_state(BatchUpdate(batch_size=2, removed=[1], added=[],
                                  moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(proc.tracked) == {0, 1} and proc.tracked[1].threshold == -1e9
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[],
                                  moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert proc.tracked[0].threshold == -1e9 and proc.tracked[1].threshold == 1e9
    proc.update_state(BatchUpdate(batch_size=1, removed=[0], added=[],
                                  moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(proc.tracked) == {0} and proc.tracked[0].threshold == 1e9
    with pytest.raises(ValueError, match="lacks"):
        DeepConfStopProcessor.validate_params(
            SamplingParams(extra_args={"confagg_deepconf": {"threshold": 1.0}}))


def test_threshold_and_marking():
    lows = [1.0, 2.0, 3.0, 4.0, math.nan]
    assert threshold(lows, 100) == 4.0 and threshold(lows, 0) == 1.0
    assert threshold(lows, 50) == pytest.approx(np.percentile([1, 2, 3, 4], 50))
    with pytest.raises(ValueError, match="no warm-up trace"):
        threshold([math.nan], 50)
    conf = np.array([5.0, 5.0, 1.0, 1.0])
    assert stopped_early(conf, 2.0, 2, "stop")
    assert not stopped_early(conf, 2.0, 2, "length")  # ran to max_tokens: not stopped
    assert not stopped_early(conf, 0.5, 2, "stop")  # above the threshold: a natural end
    assert not stopped_early(conf, 9.0, 5, "stop")  # shorter than the window


class _Interrupting:
    """The real engine, with the shard's run killed at its (limit + 1)-th generate call."""

    def __init__(self, llm, limit: int):
        self.llm, self.limit, self.calls = llm, limit, 0

    def get_tokenizer(self):
        return self.llm.get_tokenizer()

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("killed")
        return self.llm.generate(*args, **kwargs)


@pytest.fixture(scope="module")
def online_run(bundled_model, tmp_path_factory):
    """One engine with the processor: a forced threshold on plain requests, then a shard
    through generate_shard in online mode (4 problems, 4 traces, 48 tokens)."""
    cfg = load_config(*BASE_CONFIGS)
    tmp = tmp_path_factory.mktemp("online")
    rows = [{"id": f"p{i}", "problem": f"What is {i + 3} + {2 * i + 5}?",
             "answer": str(3 * i + 8), "source": "test"} for i in range(4)]
    write_jsonl(tmp / "ds.jsonl", rows)
    sampling = {key: cfg["generation"][key] for key in
                ("temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs", "seed")}
    spec = cfg["models"][cfg["solver"]]
    window = cfg["generation"]["confidence_window"]
    with _FileLock(VLLM_LOCK):
        llm = make_engine(str(bundled_model), dict(cfg["vllm"]), seed=0, online=True)
        prompts = chat_prompts(llm.get_tokenizer(), [r["problem"] for r in rows],
                               spec.get("system_prompt"), spec.get("chat_template_kwargs") or {})
        eos = llm.get_tokenizer().eos_token_id
        forced = llm.generate(prompts, sampling_params(
            sampling, 2, extra_args(1e9, 5, sampling["logprobs"], eos)), use_tqdm=False)
        plain = llm.generate(prompts, sampling_params(sampling, 2), use_tqdm=False)
        online = {"enabled": True, "warmup_traces": 2, "percentile": 100, "consensus": None,
                  "window": None}
        out = tmp / "shard.parquet"
        shard_args = dict(dataset_path=str(tmp / "ds.jsonl"), out_path=str(out),
                          progress_dir=str(tmp / "progress"), shard=0, n_shards=1, n=4,
                          model_path=str(bundled_model), model_spec=dict(spec),
                          vllm_cfg=dict(cfg["vllm"]), sampling=sampling, conf_window=window,
                          batch_problems=2, online=online)
        # killed in its second batch (2 generate calls per batch: warm-up, the rest) ...
        with pytest.raises(RuntimeError, match="killed"):
            generate_shard(**shard_args, llm=_Interrupting(llm, 2))
        first_part = pq.read_table(tmp / "progress" / "part-00000.parquet")
        # ... then resumed: only the second batch is generated
        resumed = _Interrupting(llm, 99)
        generate_shard(**shard_args, llm=resumed)
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 (best effort)
            pass
    return {"forced": forced, "plain": plain, "out": out, "tmp": tmp, "window": window,
            "first_part": first_part, "resumed_calls": resumed.calls,
            "k": sampling["logprobs"], "eos": eos, "max_tokens": sampling["max_tokens"]}


def test_forced_threshold_stops_every_trace_at_the_window(online_run):
    r = online_run
    forced = [c for o in r["forced"] for c in o.outputs]
    plain = [c for o in r["plain"] for c in o.outputs]
    # a threshold no window reaches: each trace ends on EOS at its first full window
    assert all(len(c.token_ids) == 5 and c.token_ids[-1] == r["eos"] for c in forced)
    assert all(c.finish_reason == "stop" for c in forced)
    for c in forced:
        conf = completion_confidence(c, r["k"])
        assert conf.size == 5 and stopped_early(conf, 1e9, 5, c.finish_reason)
    # requests without a threshold run as usual on the same engine
    assert sum(len(c.token_ids) for c in plain) > 2 * sum(len(c.token_ids) for c in forced)


def test_online_shard_marks_early_stopped_traces(online_run):
    r = online_run
    table = pq.read_table(r["out"])
    rows = table.to_pylist()
    # resumed like offline mode: the first batch's part kept as written, one batch redone
    assert r["resumed_calls"] == 2
    assert table.slice(0, r["first_part"].num_rows).equals(r["first_part"])
    assert set(r["first_part"].column("problem_id").to_pylist()) == {"p0", "p1"}
    assert sorted((x["problem_id"], x["sample_idx"]) for x in rows) == \
        [(f"p{i}", j) for i in range(4) for j in range(4)]
    warm = [x for x in rows if x["sample_idx"] < 2]
    rest = [x for x in rows if x["sample_idx"] >= 2]
    assert all(x["finish_reason"] in {"stop", "length"} for x in warm)
    stopped = [x for x in rest if x["finish_reason"] == LOW_CONFIDENCE]
    # percentile 100: the threshold is the warm-up's highest lowest-group confidence
    assert stopped, [x["finish_reason"] for x in rest]
    for x in stopped:
        thr = max(trace_stats(np.asarray(w["token_conf"], np.float64), r["window"])
                  ["conf_lowest_group"] for w in warm if w["problem_id"] == x["problem_id"])
        groups = group_confidence(np.asarray(x["token_conf"], np.float64), r["window"])
        # stopped at its first window under the threshold (float16 storage: 3 digits)
        assert x["n_tokens"] >= r["window"] and x["n_tokens"] < r["max_tokens"]
        assert groups[-1] < thr + 2e-2 and (groups[:-1] >= thr - 2e-2).all()
        assert len(x["token_conf"]) == x["n_tokens"]


def test_online_pool_goes_through_grading_and_curation(online_run):
    from confagg.curation import build_sets, load_samples, problem_stats

    r = online_run
    merged = r["tmp"] / "merged.parquet"
    assert merge_shards([str(r["out"])], str(r["tmp"] / "ds.jsonl"), 4, str(merged)) == 16
    samples = r["tmp"] / "samples.parquet"
    grade_samples(merged_path=str(merged), dataset_path=str(r["tmp"] / "ds.jsonl"),
                  out_path=str(samples), workers=1, timeout_s=5.0)
    t = pq.read_table(samples).to_pylist()
    unanswered = {}
    assert any(x["finish_reason"] == LOW_CONFIDENCE for x in t)
    for x in t:
        if x["finish_reason"] == LOW_CONFIDENCE:  # cut short: no final answer, no vote
            assert x["answer"] is None and x["grade_status"] == "no_answer"
        if x["answer"] is None:
            assert x["cluster"] == -1 and not x["correct"]
            unanswered[x["problem_id"]] = unanswered.get(x["problem_id"], 0) + 1
    pools = load_samples(str(samples), "bottom10")
    stats = {s["problem_id"]: s for s in problem_stats(pools).to_pylist()}
    assert sorted(stats) == ["p0", "p1", "p2", "p3"]
    assert all(s["n_samples"] == 4 and s["n_no_answer"] == unanswered.get(p, 0)
               for p, s in stats.items())
    sets = build_sets(pools, k_values=[1, 2], sets_per_problem=4, easy_ratio=1.0, seed=0,
                      on_too_few="error", path=str(samples))
    assert sets and {s["k"] for s in sets} <= {1, 2}


def test_consensus_pool_is_refused_by_merge(tmp_path):
    from confagg.generation import rows_table

    recs = [{"problem_id": "p0", "sample_idx": i, "text": "", "final_text": "", "n_tokens": 1,
             "finish_reason": "stop", "conf_mean": 1.0, "conf_tail": 1.0, "conf_bottom10": 1.0,
             "conf_lowest_group": 1.0, "token_conf": np.ones(1)} for i in range(2)]
    pq.write_table(rows_table(recs), tmp_path / "s.parquet")
    write_jsonl(tmp_path / "ds.jsonl", [{"id": "p0", "problem": "x", "answer": "1"}])
    with pytest.raises(DataError, match=r"s.parquet.*expected exactly 0..3"):
        merge_shards([str(tmp_path / "s.parquet")], str(tmp_path / "ds.jsonl"), 4,
                     str(tmp_path / "m.parquet"))


def test_online_config_reaches_the_generate_rule(tmp_path):
    overlay = tmp_path / "online.yaml"
    overlay.write_text("generation:\n  online: {enabled: true, warmup_traces: 2}\n")
    proc = run_snakemake(tmp_path, "results/generate/smollm2-135m/arith_train/samples.parquet",
                         "-n", configfiles=[*BASE_CONFIGS, overlay], lock=False)
    assert "rule generate:" in proc.stdout or "localrule generate:" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  online: {percentile: 120}\n")
    proc = run_snakemake(tmp_path, "-n", configfiles=[*BASE_CONFIGS, bad], check=False,
                         lock=False)
    assert proc.returncode != 0 and "generation.online.percentile" in proc.stdout
