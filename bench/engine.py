"""The generation stage: the generate rule's shard function against bare vLLM on one
engine, reseeded before every timed call."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np

from bench.baselines import _max_diff, project_confidence, reference_confidence
from bench.common import VllmLock, math500_rows, median, rounds_order


def reseed_worker(worker, seed: int) -> bool:
    """Run inside vLLM's worker (collective_rpc): restart the sampler's random streams."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return True


def stage_generation(sz: dict, cfg: dict, workdir: Path, model_path: str) -> dict:
    """Needs the machine-wide vLLM lock; returns the figures and the shard files."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of _reseed_worker
    from confagg.generation import chat_prompts, generate_shard, make_engine, sampling_params
    from confagg.io import write_jsonl

    spec = cfg["models"][cfg["solver"]]
    sampling = {key: cfg["generation"][key] for key in
                ("temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs", "seed")}
    sampling["max_tokens"] = sz["gen_max_tokens"]
    n, k = sz["gen_n"], sampling["logprobs"]
    problems = math500_rows(sz["gen_problems"])
    template = spec.get("prompt_template") or "{problem}"
    timings: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {}
    shards, datasets = [], []
    with VllmLock():
        t0 = time.perf_counter()
        llm = make_engine(model_path, dict(cfg["vllm"]), seed=sampling["seed"])
        engine_start_s = time.perf_counter() - t0
        prompts = chat_prompts(llm.get_tokenizer(),
                               [template.format(problem=p["problem"]) for p in problems],
                               spec.get("system_prompt"), spec.get("chat_template_kwargs") or {})
        params = {"bare_logprobs20": sampling_params(sampling, n),
                  "bare_no_logprobs": sampling_params({**sampling, "logprobs": None}, n)}

        def reseed():
            llm.collective_rpc(reseed_worker, args=(sampling["seed"],))

        def run_project(r: int) -> int:
            rows = [{"id": f"math500-{i}-r{r}", "problem": p["problem"], "answer": p["answer"],
                     "source": "math500"} for i, p in enumerate(problems)]
            ds = workdir / f"gen-dataset-r{r}.jsonl"
            write_jsonl(ds, rows)
            out = workdir / f"gen-shard-r{r}.parquet"
            generate_shard(dataset_path=str(ds), out_path=str(out),
                           progress_dir=str(workdir / f".progress-r{r}"), shard=0, n_shards=1,
                           n=n, model_path=model_path, model_spec=dict(spec),
                           vllm_cfg=dict(cfg["vllm"]), sampling=sampling, conf_window=cfg[
                               "generation"]["confidence_window"],
                           batch_problems=max(1, len(rows)), llm=llm)
            shards.append(str(out))
            datasets.append(rows)
            from confagg.io import read_parquet
            return int(sum(read_parquet(out, ["n_tokens"]).column("n_tokens").to_pylist()))

        def run_bare(name: str) -> int:
            outs = llm.generate(prompts, params[name], use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        # warm-up (untimed): first-call costs and the prefix cache, for every variant alike
        # (the first call without log-probs samples other tokens than later ones)
        for name in reversed(list(params)):
            reseed()
            warm = llm.generate(prompts, params[name], use_tqdm=False)
        # the project's confidence on the engine's own log-probs vs the reference loop
        comps = [c for o in warm for c in o.outputs]
        window = cfg["generation"]["confidence_window"]
        real_diff = _max_diff(project_confidence(comps, k, window),
                              reference_confidence(comps, k, window))
        names = ["project", "bare_logprobs20", "bare_no_logprobs"]
        for r in range(sz["runs"]):
            for name in rounds_order(names, r):
                reseed()
                t = time.perf_counter()
                tok = run_project(r) if name == "project" else run_bare(name)
                timings.setdefault(name, []).append(time.perf_counter() - t)
                tokens.setdefault(name, []).append(tok)
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 (best effort: the process exits next anyway)
            pass
    ratios = [p / b for p, b in zip(timings["project"], timings["bare_logprobs20"])]
    tput = {name: median([tk / s for tk, s in zip(tokens[name], timings[name])])
            for name in names}
    same_tokens = all(len(set(tokens[nm][r] for nm in names)) == 1
                      for r in range(sz["runs"]))
    all_rows = [row for rows in datasets for row in rows]
    return {
        "figures": {"gen_overhead_ratio": median(ratios)},
        "extra": {
            "gen_tokens_per_s": tput,
            "gen_logprobs20_cost": 1.0 - tput["bare_logprobs20"] / tput["bare_no_logprobs"],
            "gen_same_tokens_in_every_variant": same_tokens,
            "gen_engine_start_s": engine_start_s,
            "gen_prompts": len(prompts), "gen_n": n, "gen_max_tokens": sampling["max_tokens"],
            "gen_confidence_max_abs_diff_vs_reference_on_engine_logprobs": real_diff,
        },
        "raw": {"seconds": timings, "tokens": tokens, "ratios": ratios},
        "_shards": shards, "_rows": all_rows, "_n": n,
    }


