"""The online stage: DeepConf online against offline sampling on one engine."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import REPO, VllmLock
from bench.engine import reseed_worker


def _graded_votes(shard: Path, dataset: Path, workdir: Path, metric: str) -> dict:
    """Grade a shard, then each problem's confidence-weighted vote over its traces that
    were not stopped early (DeepConf's online vote) -> {problem: correct}."""
    from confagg.generation import grade_samples
    from confagg.io import read_parquet
    from confagg.online import LOW_CONFIDENCE
    from confagg.voting import weighted_vote

    graded = workdir / f"{shard.stem}-graded.parquet"
    grade_samples(merged_path=str(shard), dataset_path=str(dataset), out_path=str(graded),
                  workers=2, timeout_s=5.0)
    t = read_parquet(graded).to_pydict()
    by: dict[str, list[int]] = {}
    for i, pid in enumerate(t["problem_id"]):
        if t["finish_reason"][i] != LOW_CONFIDENCE:
            by.setdefault(pid, []).append(i)
    out = {}
    for pid in set(t["problem_id"]):
        idx = by.get(pid, [])
        win = weighted_vote([t["cluster"][i] for i in idx], [t[metric][i] for i in idx])
        out[pid] = win >= 0 and any(t["correct"][i] for i in idx if t["cluster"][i] == win)
    return out


def stage_online(sz: dict, cfg: dict, workdir: Path, model_path: str) -> dict:
    """DeepConf online (generation.online, with consensus) against offline sampling of
    the same problems on the same engine, reseeded alike: tokens and vote accuracy."""
    from confagg.datasets import load_dataset_rows
    from confagg.generation import generate_shard, make_engine
    from confagg.io import read_parquet, write_jsonl

    spec = cfg["models"][cfg["solver"]]
    gen = cfg["generation"]
    sampling = {key: gen[key] for key in
                ("temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs", "seed")}
    sampling["max_tokens"] = sz["online_max_tokens"]
    name = cfg["benchmarks"][0]
    rows, _ = load_dataset_rows(name, cfg["datasets"][name], base_dir=REPO)
    rows = rows[:sz["online_problems"]]
    dataset = workdir / "online-dataset.jsonl"
    write_jsonl(dataset, rows)
    n = sz["online_n"]
    online = {**gen["online"], "enabled": True, "consensus": gen["online"]["consensus"] or 0.95}
    metric = "conf_" + cfg["curation"]["confidence_metric"]
    runs: dict[str, dict] = {}
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of reseed_worker
    with VllmLock():
        llm = make_engine(model_path, dict(cfg["vllm"]), seed=sampling["seed"], online=True)
        for mode in ("offline", "online"):
            llm.collective_rpc(reseed_worker, args=(sampling["seed"],))
            out = workdir / f"online-{mode}.parquet"
            t = time.perf_counter()
            generate_shard(dataset_path=str(dataset), out_path=str(out),
                           progress_dir=str(workdir / f".progress-online-{mode}"), shard=0,
                           n_shards=1, n=n, model_path=model_path, model_spec=dict(spec),
                           vllm_cfg=dict(cfg["vllm"]), sampling=sampling,
                           conf_window=gen["confidence_window"],
                           batch_problems=max(1, len(rows)), llm=llm,
                           online=online if mode == "online" else None)
            seconds = time.perf_counter() - t
            tab = read_parquet(out, ["n_tokens", "finish_reason"]).to_pydict()
            runs[mode] = {"seconds": seconds, "tokens": int(sum(tab["n_tokens"])),
                          "samples": len(tab["n_tokens"]),
                          "stopped": sum(f == "low_confidence" for f in tab["finish_reason"]),
                          "out": out}
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 (best effort: the process exits next anyway)
            pass
    acc = {mode: _graded_votes(r.pop("out"), dataset, workdir, metric) for mode, r in runs.items()}
    mean = {mode: sum(a.values()) / len(a) for mode, a in acc.items()}
    return {
        "figures": {"online_token_ratio": runs["online"]["tokens"] / runs["offline"]["tokens"],
                    "online_accuracy_delta": mean["online"] - mean["offline"]},
        "extra": {"online_problems": len(rows), "online_n": n,
                  "online_max_tokens": sampling["max_tokens"], "online_settings": online,
                  "online_vote_weight": metric,
                  "online_accuracy": mean["online"], "offline_weighted_accuracy": mean["offline"],
                  "online_samples": runs["online"]["samples"],
                  "online_stopped_traces": runs["online"]["stopped"],
                  "online_time_ratio": runs["online"]["seconds"] / runs["offline"]["seconds"]},
        "raw": {"runs": runs},
    }


