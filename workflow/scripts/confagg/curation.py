"""Stage 2: from graded samples to the aggregator's training data (AggLM + confidence).

- per-problem statistics (pass rate, majority and confidence-weighted votes);
- aggregation sets: S sets of k candidates per problem and k; a set is *hard* when
  its majority answer is wrong, else *easy*; all hard sets are kept plus easy sets
  equal to p% of the hard count (per k), spread over as many problems as possible;
- prompts through the shared builder with each candidate's confidence percentile;
- a train/val split by problem, and a report.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from .io import DataError, read_jsonl, read_parquet
from .prompts import ConfidenceCalibration, build_aggregation_prompt
from .voting import majority_vote, weighted_vote

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ["problem_id", "sample_idx", "final_text", "answer", "correct", "cluster",
                    "n_tokens"]
METRIC_COLUMNS = {"mean": "conf_mean", "tail": "conf_tail", "bottom10": "conf_bottom10",
                  "lowest_group": "conf_lowest_group"}


def load_samples(path: str, metric: str) -> dict[str, dict[str, np.ndarray | list]]:
    """samples.parquet grouped by problem (rows in sample_idx order)."""
    col = METRIC_COLUMNS[metric]
    t = read_parquet(path, REQUIRED_COLUMNS + [col]).to_pydict()
    order = sorted(range(len(t["problem_id"])), key=lambda i: (t["problem_id"][i],
                                                               t["sample_idx"][i]))
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i in order:
        g = groups[t["problem_id"][i]]
        for name in REQUIRED_COLUMNS[1:]:
            g[name].append(t[name][i])
        g["conf"].append(t[col][i])
    out = {}
    for pid, g in groups.items():
        out[pid] = {**g, "cluster": np.asarray(g["cluster"], dtype=np.int32),
                    "correct": np.asarray(g["correct"], dtype=bool),
                    "conf": np.asarray(g["conf"], dtype=np.float64)}
    return out


def cluster_correct(clusters: np.ndarray, correct: np.ndarray) -> dict[int, bool]:
    """Whether each answer cluster is right (its members agree; take the majority)."""
    out = {}
    for c in np.unique(clusters[clusters >= 0]):
        out[int(c)] = bool(correct[clusters == c].mean() >= 0.5)
    return out


def representative(answers: list, clusters: np.ndarray, c: int) -> str | None:
    """The most frequent answer string of cluster c (first seen on a tie)."""
    if c < 0:
        return None
    members = [a for a, k in zip(answers, clusters) if k == c]
    return max(dict.fromkeys(members), key=members.count)


def problem_stats(samples: dict[str, dict]) -> pa.Table:
    rows = []
    for pid, g in samples.items():
        cl, cor = g["cluster"], g["correct"]
        right = cluster_correct(cl, cor)
        maj, wtd = majority_vote(cl), weighted_vote(cl, g["conf"])
        rows.append({
            "problem_id": pid, "n_samples": len(cl), "n_correct": int(cor.sum()),
            "pass_rate": float(cor.mean()),
            "majority_answer": representative(g["answer"], cl, maj),
            "majority_correct": right.get(maj, False),
            "weighted_answer": representative(g["answer"], cl, wtd),
            "weighted_correct": right.get(wtd, False),
            "n_distinct_answers": len(right), "n_no_answer": int((cl < 0).sum()),
        })
    return pa.Table.from_pylist(rows)


def draw_sets(n: int, k: int, s: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Up to s distinct k-subsets of range(n) (all of them when there are fewer)."""
    total = math.comb(n, k)
    if total <= s:
        return list(combinations(range(n), k))
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < s:
        seen[tuple(sorted(rng.sample(range(n), k)))] = None
    return list(seen)


def build_sets(samples: dict[str, dict], *, k_values: list[int], sets_per_problem: int,
               easy_ratio: float, seed: int, on_too_few: str, path: str) -> list[dict]:
    """Labelled aggregation sets after the hard/easy mix (deterministic under `seed`)."""
    chosen: list[dict] = []
    skipped: dict[int, int] = defaultdict(int)
    for k in k_values:
        hard, easy_by_problem = [], defaultdict(list)
        for pid in sorted(samples):
            g = samples[pid]
            n = len(g["cluster"])
            if n < k:
                if on_too_few == "error":
                    raise DataError(path, f"problem '{pid}' has {n} samples, fewer than k={k}",
                                    field="sample_idx")
                skipped[k] += 1
                continue
            right = cluster_correct(g["cluster"], g["correct"])
            # A generator per (seed, k, problem): a problem's sets do not change when
            # other problems or other k values are added or removed.
            rng = random.Random(f"{seed}:{k}:{pid}")
            for members in draw_sets(n, k, sets_per_problem, rng):
                idx = list(members)
                maj = majority_vote(g["cluster"][idx])
                s = {"problem_id": pid, "k": k, "candidate_ids": idx,
                     "difficulty": "easy" if right.get(maj, False) else "hard",
                     "any_correct": bool(g["correct"][idx].any())}
                (easy_by_problem[pid] if s["difficulty"] == "easy" else hard).append(s)
        n_easy = min(round(easy_ratio * len(hard)), sum(map(len, easy_by_problem.values())))
        # Round-robin over problems in a seeded order: each problem gives one easy set
        # before any gives a second, so problems repeat as little as possible.
        rng = random.Random(f"{seed}:{k}:easy")
        pools = {pid: rng.sample(v, len(v)) for pid, v in easy_by_problem.items()}
        order = rng.sample(sorted(pools), len(pools))
        easy: list[dict] = []
        while len(easy) < n_easy:
            for pid in order:
                if pools[pid] and len(easy) < n_easy:
                    easy.append(pools[pid].pop())
        chosen.extend(hard + easy)
        log.info("k=%d: %d hard sets, %d easy sets kept (ratio %.2f)", k, len(hard), len(easy),
                 easy_ratio)
    for k, count in skipped.items():
        log.warning("k=%d: skipped %d problems with fewer than %d samples", k, count, k)
    return chosen


def split_problems(problem_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The validation problems: a seeded fraction, at least one when there are two or more."""
    ids = sorted(problem_ids)
    random.Random(seed).shuffle(ids)
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and n_val == 0 and len(ids) >= 2:
        n_val = 1
    return set(ids[:n_val])


def make_rows(sets: list[dict], samples: dict[str, dict], problems: dict[str, dict],
              calibration: ConfidenceCalibration, *, show_confidence: bool, scale: str,
              token_budget: int | None, tokenizer) -> list[dict[str, Any]]:
    rows = []
    for s in sets:
        g, prob = samples[s["problem_id"]], problems[s["problem_id"]]
        idx = s["candidate_ids"]
        raw = g["conf"][idx]
        shown = calibration(raw) if scale == "percentile" else raw
        prompt = build_aggregation_prompt(
            prob["problem"], [g["final_text"][i] for i in idx], [float(x) for x in shown],
            show_confidence=show_confidence, token_budget=token_budget, tokenizer=tokenizer)
        rows.append({"prompt": prompt, "answer": prob["answer"], "problem_id": s["problem_id"],
                     "k": s["k"], "difficulty": s["difficulty"],
                     "candidate_ids": [int(g["sample_idx"][i]) for i in idx],
                     "confidences": [round(float(x), 2) for x in shown]})
    return rows


def report(sets: list[dict], rows: list[dict], val_ids: set[str], tokenizer) -> dict[str, Any]:
    by = defaultdict(lambda: {"hard": 0, "easy": 0, "any_correct": 0})
    for s in sets:
        b = by[s["k"]]
        b[s["difficulty"]] += 1
        b["any_correct"] += s["any_correct"]
    lengths = np.array([len(tokenizer.encode(r["prompt"], add_special_tokens=False))
                        for r in rows]) if rows else np.zeros(0)
    per_k = {}
    for k in sorted(by):
        b = by[k]
        total = b["hard"] + b["easy"]
        per_k[str(k)] = {"sets": total, "hard": b["hard"], "easy": b["easy"],
                         "oracle_ceiling": b["any_correct"] / total if total else None}
    return {
        "sets": len(sets), "train_rows": sum(r["problem_id"] not in val_ids for r in rows),
        "val_rows": sum(r["problem_id"] in val_ids for r in rows),
        "val_problems": len(val_ids), "by_k": per_k,
        "prompt_tokens": ({"mean": float(lengths.mean()), "p50": float(np.median(lengths)),
                           "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}
                          if lengths.size else None),
    }


def report_markdown(rep: dict[str, Any]) -> str:
    lines = ["# Curation report", "",
             f"{rep['sets']} aggregation sets: {rep['train_rows']} train rows, "
             f"{rep['val_rows']} validation rows ({rep['val_problems']} validation problems).",
             "", "| k | sets | hard | easy | oracle ceiling |", "|---|---|---|---|---|"]
    for k, b in rep["by_k"].items():
        oc = "n/a" if b["oracle_ceiling"] is None else f"{100 * b['oracle_ceiling']:.1f}%"
        lines.append(f"| {k} | {b['sets']} | {b['hard']} | {b['easy']} | {oc} |")
    if rep["prompt_tokens"]:
        p = rep["prompt_tokens"]
        lines += ["", f"Prompt length in tokens: mean {p['mean']:.0f}, median {p['p50']:.0f}, "
                      f"p95 {p['p95']:.0f}, max {p['max']}."]
    lines += ["", "The oracle ceiling is the share of sets with at least one correct candidate: "
                  "the best any aggregator of those sets could do."]
    return "\n".join(lines) + "\n"


def load_problems(dataset_path: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(dataset_path)}
