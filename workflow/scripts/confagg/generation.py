"""Stage 1: sample candidate solutions with vLLM, one resumable shard at a time.

A shard is every `n_shards`-th problem of the dataset (by row), so shards are
deterministic and balanced. The shard works through its problems in batches; each
finished batch is written at once as a Parquet part under a progress folder that
Snakemake does not own (it deletes a failed job's outputs, not this). A rerun
after a kill reads the parts, skips the problems they hold and generates the rest.
Confidence is computed from each completion's log-probs right after its batch
returns; only the float16 per-token confidence is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .confidence import STAT_NAMES, token_confidence, token_confidence_flat, trace_stats
from .io import DataError, conform, read_jsonl, read_parquet, write_parquet

log = logging.getLogger(__name__)

LOW_CONFIDENCE = "low_confidence"  # finish_reason of a trace DeepConf online stopped

SAMPLE_SCHEMA = pa.schema([
    ("problem_id", pa.string()),
    ("sample_idx", pa.int32()),
    ("text", pa.string()),
    ("final_text", pa.string()),
    ("n_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    *[(name, pa.float32()) for name in STAT_NAMES],
    ("token_conf", pa.list_(pa.float16())),
])


def split_final(text: str) -> str:
    """The part after the last </think> (a thinking model's answer), else the whole text."""
    pos = text.rfind("</think>")
    return text[pos + len("</think>"):].lstrip() if pos >= 0 else text


def shard_rows(rows: list[dict], shard: int, n_shards: int) -> list[dict]:
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    return rows[shard::n_shards]


def check_model_path(model_path: str) -> None:
    """A local-looking path that does not exist is an error here, not a Hub lookup later."""
    p = Path(model_path)
    looks_local = p.is_absolute() or model_path.startswith((".", "resources/", "results/"))
    if looks_local and not (p / "config.json").exists():
        raise FileNotFoundError(f"{model_path}: model folder not found (no config.json)")


def make_engine(model_path: str, vllm_cfg: dict, seed: int, online: bool = False):
    """One vLLM engine. On a CPU, `kv_cache_gib` sizes the KV cache explicitly
    (gpu_memory_utilization there must cover the weights too); the engine is seeded
    because per-request seeds break the CPU worker. `online`: with DeepConf's
    early-stopping logits processor (confagg.online)."""
    from vllm import LLM

    check_model_path(model_path)
    kwargs: dict[str, Any] = dict(
        model=model_path, seed=seed, dtype=vllm_cfg.get("dtype", "auto"),
        max_model_len=vllm_cfg.get("max_model_len"),
        enforce_eager=vllm_cfg.get("enforce_eager", False),
        tensor_parallel_size=vllm_cfg.get("tensor_parallel_size", 1),
        gpu_memory_utilization=vllm_cfg.get("gpu_memory_utilization", 0.9),
    )
    if vllm_cfg.get("kv_cache_gib"):
        kwargs["kv_cache_memory_bytes"] = int(vllm_cfg["kv_cache_gib"] * 2**30)
    if online:
        from .online import PROCESSOR_FQCN

        kwargs["logits_processors"] = [PROCESSOR_FQCN]
    return LLM(**kwargs)


def chat_prompts(tokenizer, user_texts: list[str], system_prompt: str | None,
                 chat_template_kwargs: dict) -> list[str]:
    """Render user messages (and an optional system prompt) with the model's chat template."""
    out = []
    for text in user_texts:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": text})
        try:
            out.append(tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True,
                **(chat_template_kwargs or {})))
        except Exception as exc:
            raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')} "
                             f"failed: {type(exc).__name__}: {exc}") from exc
    return out


# A job's log gets vLLM's request bar at most this often (seconds), not one line a token.
REQUEST_BAR_S = 30.0


def request_bar():
    """`use_tqdm` for `LLM.generate`: vLLM's bar moves per finished request and shows
    output tokens/s and the ETA; in a log, at most one line per REQUEST_BAR_S."""
    from functools import partial

    from tqdm import tqdm

    return partial(tqdm, mininterval=REQUEST_BAR_S)


def sampling_params(sampling: dict, n: int, extra_args: dict | None = None):
    from vllm import SamplingParams

    return SamplingParams(
        extra_args=extra_args,
        n=n, temperature=sampling["temperature"], top_p=sampling["top_p"],
        top_k=sampling["top_k"], min_p=sampling["min_p"], max_tokens=sampling["max_tokens"],
        logprobs=sampling["logprobs"],
        # One flat list per completion instead of a dict per token: far less Python work.
        flat_logprobs=True,
    )


def completion_confidence(completion, k: int) -> np.ndarray:
    """Per-token confidence of one vLLM CompletionOutput (flat or dict log-probs)."""
    lps = completion.logprobs
    if lps is None:
        raise ValueError("the engine returned no log-probs (logprobs must be set)")
    if hasattr(lps, "start_indices"):  # FlatLogprobs: its lists as they are
        return token_confidence_flat(lps.logprobs, lps.ranks, lps.start_indices,
                                     lps.end_indices, k)
    topk = np.array([sorted((lp.logprob for lp in pos.values()), reverse=True)[:k]
                     for pos in lps])
    return token_confidence(topk)


def rows_table(records: list[dict]) -> pa.Table:
    """Sample records -> a Table of SAMPLE_SCHEMA (token_conf built from flat float16)."""
    confs = [r.pop("token_conf") for r in records]
    offsets = np.zeros(len(confs) + 1, dtype=np.int32)
    np.cumsum([len(c) for c in confs], out=offsets[1:])
    flat = np.concatenate(confs).astype(np.float16) if confs else np.zeros(0, np.float16)
    token_conf = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.float16()))
    cols = {name: [r[name] for r in records] for name in SAMPLE_SCHEMA.names[:-1]}
    arrays = [pa.array(cols[f.name], type=f.type) for f in SAMPLE_SCHEMA if f.name != "token_conf"]
    return pa.Table.from_arrays([*arrays, token_conf], schema=SAMPLE_SCHEMA)


class ShardProgress:
    """Finished batches of one shard, as Parquet parts in a folder Snakemake leaves alone."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        meta = self.folder / "meta.json"
        if meta.exists() and json.loads(meta.read_text()).get("fingerprint") != self.fingerprint:
            log.info("settings changed since the last attempt: discarding %s", self.folder)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"fingerprint": self.fingerprint}))

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def done_values(self, column: str) -> set:
        """The values of `column` in the finished parts (what need not be done again)."""
        done: set = set()
        for p in self.parts():
            done.update(read_parquet(p, [column]).column(column).to_pylist())
        return done

    def done_ids(self) -> set[str]:
        return self.done_values("problem_id")

    def write(self, table: pa.Table) -> None:
        write_parquet(self.folder / f"part-{len(self.parts()):05d}.parquet", table)

    def collect(self, schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
        parts = [read_parquet(p) for p in self.parts()]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def sample_record(row: dict, idx: int, comp, k: int, conf_window: int) -> dict:
    conf = completion_confidence(comp, k)
    return {"problem_id": row["id"], "sample_idx": idx, "text": comp.text,
            "final_text": split_final(comp.text), "n_tokens": len(comp.token_ids),
            "finish_reason": comp.finish_reason or "stop",
            **trace_stats(conf, window=conf_window), "token_conf": conf}


def online_batch(llm, prompts: list[str], batch: list[dict], n: int, sampling: dict,
                 online: dict, conf_window: int) -> list[dict]:
    """DeepConf online for a batch of problems: `warmup_traces` plain traces each set
    the problem's threshold; the rest are sampled under it (stopped traces marked
    `low_confidence`). With `consensus`, the rest come in rounds of `warmup_traces`
    and a problem stops once one answer holds that share of the confidence-weighted
    vote of its finished traces (its pool then has fewer than n samples)."""
    from .online import extra_args, stopped_early, threshold

    k = sampling["logprobs"]
    window = online.get("window") or conf_window
    warm = min(online["warmup_traces"], n)
    eos = llm.get_tokenizer().eos_token_id
    outputs = llm.generate(prompts, sampling_params(sampling, warm), use_tqdm=False)
    records = {row["id"]: [sample_record(row, i, comp, k, conf_window)
                           for i, comp in enumerate(out.outputs)]
               for row, out in zip(batch, outputs)}
    thr = {pid: threshold([trace_stats(r["token_conf"], window)["conf_lowest_group"]
                           for r in recs], online["percentile"])
           for pid, recs in records.items()}
    consensus = online.get("consensus")
    step = warm if consensus else n - warm
    active = [i for i in range(len(batch)) if n > warm]
    while active:
        params = [sampling_params(sampling, min(step, n - len(records[batch[i]["id"]])),
                                  extra_args(thr[batch[i]["id"]], window, k, eos))
                  for i in active]
        outputs = llm.generate([prompts[i] for i in active], params, use_tqdm=False)
        still = []
        for i, out in zip(active, outputs):
            row = batch[i]
            recs = records[row["id"]]
            for comp in out.outputs:
                rec = sample_record(row, len(recs), comp, k, conf_window)
                if stopped_early(rec["token_conf"], thr[row["id"]], window, comp.finish_reason):
                    rec["finish_reason"] = LOW_CONFIDENCE
                recs.append(rec)
            if len(recs) < n and not (consensus and vote_share(recs, window) >= consensus):
                still.append(i)
        active = still
    return [r for row in batch for r in records[row["id"]]]


def vote_share(records: list[dict], window: int) -> float:
    """The leading answer's share of the confidence-weighted vote over the traces that
    finished with a boxed answer (answers compared as normalized strings; weights the
    lowest group confidence, as the threshold)."""
    from .grading import last_boxed

    votes: dict[str, float] = {}
    for r in records:
        ans = last_boxed(r["final_text"]) if r["finish_reason"] != LOW_CONFIDENCE else None
        if ans is not None:
            key = " ".join(ans.split())
            weight = trace_stats(r["token_conf"], window)["conf_lowest_group"]
            votes[key] = votes.get(key, 0.0) + max(weight, 0.0)
    total = sum(votes.values())
    return max(votes.values()) / total if total > 0 else 0.0


def generate_shard(*, dataset_path: str, out_path: str, progress_dir: str, shard: int,
                   n_shards: int, n: int, model_path: str, model_spec: dict, vllm_cfg: dict,
                   sampling: dict, conf_window: int, batch_problems: int, llm=None,
                   online: dict | None = None) -> int:
    """Generate `n` samples for every problem of one shard; returns the row count.

    `llm`: an engine already started (the benchmark times the shard's work apart from
    the engine start); by default the shard starts its own, seeded for the shard.
    `online`: the `generation.online` block; when enabled, DeepConf online sampling
    (`online_batch`) replaces plain sampling and the engine must carry its processor."""
    online = online if online and online.get("enabled") else None
    from tqdm import tqdm

    rows = read_jsonl(dataset_path)
    if not rows:
        raise DataError(dataset_path, "the dataset is empty")
    mine = shard_rows(rows, shard, n_shards)
    progress = ShardProgress(progress_dir, {
        "model": model_path, "spec": model_spec, "vllm": vllm_cfg, "sampling": sampling,
        "n": n, "window": conf_window, "shard": shard, "n_shards": n_shards,
        "problems": [r["id"] for r in mine], **({"online": online} if online else {})})
    done = progress.done_ids()
    todo = [r for r in mine if r["id"] not in done]
    log.info("shard %d/%d: %d problems, %d already finished, %d to generate",
             shard, n_shards, len(mine), len(mine) - len(todo), len(todo))
    if todo:
        if llm is None:
            llm = make_engine(model_path, vllm_cfg, seed=sampling["seed"] + shard,
                              online=online is not None)
        tokenizer = llm.get_tokenizer()
        template = model_spec.get("prompt_template") or "{problem}"
        params = sampling_params(sampling, n)
        k = sampling["logprobs"]
        bar = tqdm(total=len(todo), desc=f"shard {shard} problems", unit="problem")
        for start in range(0, len(todo), batch_problems):
            batch = todo[start:start + batch_problems]
            prompts = chat_prompts(tokenizer, [template.format(problem=r["problem"]) for r in batch],
                                   model_spec.get("system_prompt"),
                                   model_spec.get("chat_template_kwargs") or {})
            if online:
                records = online_batch(llm, prompts, batch, n, sampling, online, conf_window)
            else:
                outputs = llm.generate(prompts, params, use_tqdm=request_bar())
                records = [sample_record(row, idx, comp, k, conf_window)
                           for row, out in zip(batch, outputs)
                           for idx, comp in enumerate(out.outputs)]
            progress.write(rows_table(records))
            bar.update(len(batch))
        bar.close()
    table = progress.collect()
    write_parquet(out_path, table)
    progress.clear()
    return table.num_rows


def merge_shards(shard_paths: list[str], dataset_path: str, n: int, out_path: str) -> int:
    """Join shard files and check that every problem has exactly samples 0..n-1."""
    rows = read_jsonl(dataset_path)
    expected = {r["id"] for r in rows}
    tables, owner = [], {}
    for path in shard_paths:
        t = read_parquet(path)
        missing = [c for c in SAMPLE_SCHEMA.names if c not in t.schema.names]
        if missing:
            raise DataError(path, f"missing column(s) {missing}", field=missing[0])
        for pid in set(t.column("problem_id").to_pylist()):
            if pid in owner:
                raise DataError(path, f"problem '{pid}' is also in shard {owner[pid]}")
            owner[pid] = path
        tables.append(conform(path, t, SAMPLE_SCHEMA, required=("problem_id", "sample_idx")))
    table = pa.concat_tables(tables)
    pids = table.column("problem_id").to_numpy(zero_copy_only=False)
    idx = table.column("sample_idx").to_numpy()
    order = np.lexsort((idx, pids))
    table = table.take(pa.array(order))
    by_problem: dict[str, list[int]] = {}
    for pid, i in zip(table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist()):
        by_problem.setdefault(pid, []).append(i)
    for pid in sorted(expected - set(by_problem)):
        raise DataError(dataset_path, f"problem '{pid}' has no samples in any shard")
    for pid, got in by_problem.items():
        if pid not in expected:
            raise DataError(owner[pid], f"problem '{pid}' is not in the dataset {dataset_path}")
        if got != list(range(n)):
            raise DataError(owner[pid], f"problem '{pid}' has samples {_ranges(got)}, "
                                        f"expected exactly 0..{n - 1}", field="sample_idx")
    write_parquet(out_path, table)
    return table.num_rows


def _ranges(values: list[int]) -> str:
    return str(values) if len(values) <= 10 else f"{values[:5]}...{values[-3:]} ({len(values)})"


def grade_samples(*, merged_path: str, dataset_path: str, out_path: str, workers: int,
                  timeout_s: float) -> dict:
    """Extract and grade every sample, cluster answers per problem (each cluster holds
    one verdict); write samples.parquet."""
    from .grading import Grader, cluster_answers, split_by_verdict

    table = read_parquet(merged_path)
    gold = {r["id"]: r["answer"] for r in read_jsonl(dataset_path)}
    pids = table.column("problem_id").to_pylist()
    texts = table.column("final_text").to_pylist()
    # A trace stopped for low confidence (DeepConf online) was cut mid-way: whatever it
    # wrote last is no final answer, and DeepConf leaves it out of every vote.
    stopped = [f == LOW_CONFIDENCE for f in table.column("finish_reason").to_pylist()]
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        answers = grader.extract(texts, progress="extract answers")
        answers = [None if cut else a for a, cut in zip(answers, stopped)]
        grades = grader.grade([(gold[p], a) for p, a in zip(pids, answers)],
                              progress="grade answers")
        correct = np.array([g.correct for g in grades], dtype=bool)
        clusters = np.full(len(pids), -1, dtype=np.int32)
        positions: dict[str, list[int]] = {}
        for i, p in enumerate(pids):
            positions.setdefault(p, []).append(i)
        from tqdm import tqdm

        for idxs in tqdm(positions.values(), desc="cluster answers", unit="problem",
                         mininterval=2):
            clusters[idxs] = split_by_verdict(
                cluster_answers([answers[i] for i in idxs], grader), correct[idxs])
        stats = dict(grader.stats)
    table = (table
             .append_column("answer", pa.array(answers, type=pa.string()))
             .append_column("correct", pa.array(correct, type=pa.bool_()))
             .append_column("grade_status", pa.array([g.status for g in grades], type=pa.string()))
             .append_column("cluster", pa.array(clusters, type=pa.int32())))
    write_parquet(out_path, table)
    statuses = {s: sum(g.status == s for g in grades) for s in ("ok", "no_answer", "timeout", "error")}
    n_correct = sum(g.correct for g in grades)
    return {"samples": len(pids), "correct": n_correct,
            "accuracy": n_correct / len(pids) if pids else math.nan, **statuses,
            "grader": stats}
