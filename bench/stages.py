"""The stages that need no engine: confidence, grading, storage, evaluation."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

from bench.baselines import (
    _max_diff,
    linear_loop_confidence,
    naive_grade,
    project_confidence,
    reference_confidence,
)
from bench.common import bench_command, child_env, math500_rows, median, rounds_order
from bench.data import eval_pools, grading_pool, synthetic_traces


def stage_confidence(sz: dict, cfg: dict) -> dict:
    k, window = cfg["generation"]["logprobs"], cfg["generation"]["confidence_window"]
    comps = synthetic_traces(sz["conf_tokens"], k, sz["conf_min_len"], sz["conf_max_len"])
    n_tokens = sum(len(c.logprobs.start_indices) for c in comps)
    variants = {"project": project_confidence, "reference_loop": reference_confidence,
                "linear_loop": linear_loop_confidence}
    times: dict[str, list[float]] = {v: [] for v in variants}
    results = {}
    for r in range(sz["runs"]):
        for name in rounds_order(list(variants), r):
            t = time.perf_counter()
            results[name] = variants[name](comps, k, window)
            times[name].append(time.perf_counter() - t)
    ratios = [ref / proj for ref, proj in zip(times["reference_loop"], times["project"])]
    ratios_lin = [lin / proj for lin, proj in zip(times["linear_loop"], times["project"])]
    return {
        "figures": {"confidence_speedup": median(ratios)},
        "extra": {"confidence_speedup_vs_linear_loop": median(ratios_lin),
                  "confidence_max_abs_diff": max(_max_diff(results["project"], results[v])
                                                 for v in ("reference_loop", "linear_loop")),
                  "confidence_tokens": n_tokens, "confidence_traces": len(comps),
                  "confidence_k": k, "confidence_window": window},
        "raw": {"seconds": times, "ratios": ratios, "ratios_vs_linear_loop": ratios_lin},
    }


def grade_runner(which: str, pool_path: str, out_path: str, workers: int,
                  timeout_s: float) -> None:
    """One timed grading run in a fresh process (both sides start cold)."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every unparsable string
    items = [tuple(x) for x in json.loads(Path(pool_path).read_text())]
    if which == "naive":
        # Both sides are timed from a cold start: here the import of math-verify, on the
        # project's side the grader's fork server importing it and starting the workers.
        t, c0 = time.perf_counter(), time.process_time()
        import math_verify  # noqa: F401

        correct = naive_grade(items)
        seconds = time.perf_counter() - t
        stats = {}
    else:
        from confagg.grading import Grader

        t, c = time.perf_counter(), time.process_time()
        with Grader(workers=workers, timeout_s=timeout_s) as g:  # workers start in the timing
            correct = [x.correct for x in g.grade(items)]
            stats = dict(g.stats)
            cpu = time.process_time() - c + _descendants_cpu()  # before the workers go
        seconds = time.perf_counter() - t
    if which == "naive":
        cpu = time.process_time() - c0
    Path(out_path).write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                                          "correct": correct, "stats": stats}))


def _descendants_cpu() -> float:
    """CPU seconds of this process's live descendants (the grader's fork server and
    workers); psutil comes with vLLM. NaN where it is missing."""
    try:
        import psutil
    except ImportError:
        return math.nan
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _run_grade_once(which: str, pool_path: Path, workdir: Path, workers: int,
                    timeout_s: float) -> dict:
    out = workdir / f"grade-{which}.json"
    subprocess.run(bench_command("--grade-runner", which, str(pool_path), str(out),
                                 str(workers), str(timeout_s)), check=True, env=child_env())
    return json.loads(out.read_text())


def _grading_figures(items, runs: int, workdir: Path, workers: int, timeout_s: float,
                     tag: str) -> dict:
    pool_path = workdir / f"pool-{tag}.json"
    pool_path.write_text(json.dumps(items))
    times: dict[str, list[float]] = {"project": [], "naive": []}
    cpu: dict[str, list[float]] = {"project": [], "naive": []}
    agree, stats = [], {}
    for r in range(runs):
        res = {}
        for which in rounds_order(["project", "naive"], r):
            res[which] = _run_grade_once(which, pool_path, workdir, workers, timeout_s)
            times[which].append(res[which]["seconds"])
            cpu[which].append(res[which]["cpu_seconds"])
        stats = res["project"]["stats"]
        both = list(zip(res["project"]["correct"], res["naive"]["correct"]))
        agree.append(sum(a == b for a, b in both) / len(both))
        if r == 0:
            disagreements = [(items[i], a, b) for i, (a, b) in enumerate(both) if a != b][:20]
    ratios = [n / p for n, p in zip(times["naive"], times["project"])]
    cpu_ratios = [n / p for n, p in zip(cpu["naive"], cpu["project"])]
    distinct = len({(g.strip(), a.strip()) for g, a in items if a is not None})
    return {"speedup": median(ratios), "agreement": min(agree), "ratios": ratios,
            "seconds": times, "cpu_seconds": cpu, "cpu_ratio": median(cpu_ratios), "samples": len(items),
            "distinct_pairs": distinct,
            "grader_stats": stats, "disagreements": disagreements}


def stage_grading(sz: dict, cfg: dict, workdir: Path) -> dict:
    workers, timeout_s = cfg["grading"]["workers"], cfg["grading"]["timeout_s"]
    golds = [r["answer"] for r in math500_rows(sz["grade_problems"])]
    main = _grading_figures(grading_pool(golds, sz["grade_samples"]), sz["runs"], workdir,
                            workers, timeout_s, "main")
    extra = {"grading_samples_per_problem": sz["grade_samples"],
             "grading_cpu_ratio": main["cpu_ratio"],
             "grading_problems": len(golds), "grading_workers": workers,
             "grading_pool_samples": main["samples"],
             "grading_pool_distinct_pairs": main["distinct_pairs"],
             "grading_disagreements": main["disagreements"],
             "grader_stats": main["grader_stats"]}
    raw = {"main": {k: main[k] for k in ("ratios", "seconds", "cpu_seconds")}}
    if sz["grade_samples_small"]:
        small = _grading_figures(grading_pool(golds, sz["grade_samples_small"]), sz["runs"],
                                 workdir, workers, timeout_s, "small")
        extra[f"grading_speedup_at_{sz['grade_samples_small']}_samples"] = small["speedup"]
        extra[f"grading_agreement_at_{sz['grade_samples_small']}_samples"] = small["agreement"]
        extra[f"grading_cpu_ratio_at_{sz['grade_samples_small']}_samples"] = small["cpu_ratio"]
        raw["small"] = {k: small[k] for k in ("ratios", "seconds", "cpu_seconds")}
    return {"figures": {"grading_speedup": main["speedup"],
                        "grading_agreement": main["agreement"]},
            "extra": extra, "raw": raw}


def conf_column_bytes(path: str | Path) -> tuple[int, int]:
    """(bytes on disk of the token_conf column, rows): compressed column chunks, pages
    and their headers included, summed over row groups."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    total = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            if rg.column(j).path_in_schema.split(".")[0] == "token_conf":
                total += rg.column(j).total_compressed_size
    return total, md.num_rows


def _synthetic_shard(workdir: Path, n_samples: int, cfg: dict) -> tuple[list[str], list[dict], int]:
    """Quick mode (no engine): a shard written by the project's writer from synthetic
    completions (confidence computed by the project from synthetic log-probs)."""
    from confagg.confidence import trace_stats
    from confagg.generation import completion_confidence, rows_table
    from confagg.io import write_parquet

    k, window = cfg["generation"]["logprobs"], cfg["generation"]["confidence_window"]
    n = 8  # samples per problem
    n_problems = max(1, n_samples // n)
    comps = synthetic_traces(n_problems * n * 500, k, 100, 500, seed=1)[:n_problems * n]
    rows, records = [], []
    for i, c in enumerate(comps):
        pid = f"q{i // n}"
        if i % n == 0:
            rows.append({"id": pid, "problem": "1+1?", "answer": str(i % 7), "source": "bench"})
        conf = completion_confidence(c, k)
        text = f"so the answer is \\boxed{{{i % 5}}}"
        records.append({"problem_id": pid, "sample_idx": i % n, "text": text,
                        "final_text": text, "n_tokens": int(conf.size), "finish_reason": "stop",
                        **trace_stats(conf, window=window), "token_conf": conf})
    shard = workdir / "synthetic-shard.parquet"
    write_parquet(shard, rows_table(records))
    return [str(shard)], rows, n


def stage_storage(sz: dict, cfg: dict, workdir: Path, gen: dict | None) -> dict:
    from confagg.generation import grade_samples, merge_shards
    from confagg.io import read_parquet, write_jsonl

    if gen:
        shards, rows, n, source = gen["_shards"], gen["_rows"], gen["_n"], "generated"
    else:
        shards, rows, n = _synthetic_shard(workdir, sz["storage_synthetic_samples"], cfg)
        source = "synthetic"
    dataset = workdir / "storage-dataset.jsonl"
    write_jsonl(dataset, rows)
    merged, samples = workdir / "merged.parquet", workdir / "samples.parquet"
    merge_shards(shards, str(dataset), n, str(merged))
    grade_samples(merged_path=str(merged), dataset_path=str(dataset), out_path=str(samples),
                  workers=cfg["grading"]["workers"], timeout_s=cfg["grading"]["timeout_s"])
    col_bytes, n_rows = conf_column_bytes(samples)
    n_tokens = int(sum(read_parquet(samples, ["n_tokens"]).column("n_tokens").to_pylist()))
    return {"figures": {"conf_bytes_per_token": col_bytes / n_tokens},
            "extra": {"storage_source": source, "storage_tokens": n_tokens,
                      "storage_rows": n_rows, "storage_token_conf_bytes": col_bytes,
                      "storage_file_bytes": samples.stat().st_size}}


def stage_eval(sz: dict, cfg: dict) -> dict:
    from confagg.estimators import budgets_up_to, evaluate_pools

    ev = cfg["evaluation"]
    n_draws = sz["eval_n_draws"] or ev["n_draws"]
    n_boot = sz["eval_bootstrap"] or ev["bootstrap"]
    pools = eval_pools(sz["eval_problems"], sz["eval_samples"])
    times = []
    for _ in range(sz["runs"]):
        t = time.perf_counter()
        rows = evaluate_pools(pools, n_draws=n_draws, n_boot=n_boot, seed=ev["seed"])
        times.append(time.perf_counter() - t)
    return {"figures": {"eval_seconds": median(times)},
            "extra": {"eval_problems": sz["eval_problems"], "eval_samples": sz["eval_samples"],
                      "eval_budgets": budgets_up_to(sz["eval_samples"]), "eval_n_draws": n_draws,
                      "eval_bootstrap": n_boot, "eval_rows": len(rows)},
            "raw": {"seconds": times}}


