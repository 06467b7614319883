"""Stage 2: from graded samples to the aggregator's training data (AggLM + confidence).

- per-problem statistics (pass rate, majority and confidence-weighted votes);
- aggregation sets: S sets of k candidates per problem and k; a set is *hard* when
  its majority answer is wrong, else *easy*; all hard sets are kept plus easy sets
  equal to p% of the hard count (per k), spread over as many problems as possible;
- training problems that overlap a benchmark (`decontam`) are left out first;
- prompts through the shared builder with each candidate's confidence (percentile or
  raw, `confidence_scale`), and the same prompt without it (the AggLM baseline's);
- a train/val split by problem, and a report (with how well each confidence statistic
  predicts a correct sample, and how many traces are shorter than one window).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .confidence import auroc
from .io import DataError, iter_jsonl, read_parquet
from .prompts import ConfidenceCalibration, build_aggregation_prompt, confidence_values
from .voting import majority_vote, weighted_vote

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ["problem_id", "sample_idx", "final_text", "answer", "correct", "cluster",
                    "n_tokens"]
METRIC_COLUMNS = {"mean": "conf_mean", "tail": "conf_tail", "bottom10": "conf_bottom10",
                  "lowest_group": "conf_lowest_group"}


def load_samples(path: str, metric: str, *,
                 with_text: bool = True) -> dict[str, dict[str, np.ndarray | list]]:
    """samples.parquet grouped by problem (rows in sample_idx order). Without text, the
    solutions' `final_text` (most of the file's memory at full scale) is not read."""
    col = METRIC_COLUMNS[metric]
    names = [c for c in REQUIRED_COLUMNS if with_text or c != "final_text"]
    t = read_parquet(path, names + [col]).to_pydict()
    order = sorted(range(len(t["problem_id"])), key=lambda i: (t["problem_id"][i],
                                                               t["sample_idx"][i]))
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i in order:
        pid = t["problem_id"][i]
        g = groups[pid]
        if g["sample_idx"] and g["sample_idx"][-1] == t["sample_idx"][i]:
            raise DataError(path, f"problem '{pid}' has sample_idx {t['sample_idx'][i]} twice",
                            row=i + 1, field="sample_idx")
        for name in names[1:]:
            g[name].append(t[name][i])
        g["conf"].append(t[col][i])
    out = {}
    for pid, g in groups.items():
        correct = np.asarray(g["correct"], dtype=bool)
        cluster = np.asarray(g["cluster"], dtype=np.int32)
        for c in np.unique(cluster[cluster >= 0]).tolist():
            verdicts = correct[cluster == c]
            if verdicts.any() and not verdicts.all():
                # grade_samples splits such clusters (grading.split_by_verdict): a file
                # written before it did needs re-grading, not a guess at its votes
                rows = [i for i in order if t["problem_id"][i] == pid and t["cluster"][i] == c]
                odd = next(i for i in rows if t["correct"][i] != t["correct"][rows[0]])
                raise DataError(path, f"problem '{pid}' has right and wrong answers in "
                                      f"cluster {c}; rerun grade_samples for this file "
                                      f"(snakemake -R grade_samples)",
                                row=odd + 1, field="cluster")
        out[pid] = {**g, "cluster": cluster, "correct": correct,
                    "conf": np.asarray(g["conf"], dtype=np.float64)}
    return out


def cluster_correct(clusters: np.ndarray, correct: np.ndarray) -> dict[int, bool]:
    """Whether each answer cluster is right (its members share one verdict: load_samples)."""
    return {int(c): bool(correct[clusters == c][0]) for c in np.unique(clusters[clusters >= 0])}


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
               easy_ratio: float, seed: int, on_too_few: str, path: str,
               counts: dict | None = None) -> list[dict]:
    """Labelled aggregation sets after the hard/easy mix (deterministic under `seed`).

    `counts`, when given, receives per k the sets drawn before the mix: {k: {"drawn",
    "hard", "easy_available", "skipped_problems"}}.
    """
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
        if counts is not None:
            n_avail = sum(map(len, easy_by_problem.values()))
            counts[k] = {"drawn": len(hard) + n_avail, "hard": len(hard),
                         "easy_available": n_avail, "skipped_problems": skipped[k]}
        log.info("k=%d: %d hard sets, %d of %d easy sets kept (target %.0f%% of the hard)", k,
                 len(hard), len(easy), sum(map(len, easy_by_problem.values())),
                 100 * easy_ratio)
    for k, count in skipped.items():
        if count:
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
              token_budget: int | None, tokenizer, dataset_path: str = "dataset",
              progress: bool = False, style: str = "agglm") -> list[dict[str, Any]]:
    """One training row per set: the shared prompt and the gold answer (both strings), and
    `prompt_noconf`, the same candidates under the same budget without their confidence
    (the AggLM baseline's run trains on it); `style` is the prompts' wording."""
    from tqdm import tqdm

    missing = sorted({s["problem_id"] for s in sets} - set(problems))
    if missing:
        raise DataError(dataset_path, f"{len(missing)} problem(s) of the samples are not in "
                        f"the dataset, e.g. {missing[:3]}", field="id")
    rows = []
    for s in tqdm(sets, desc="aggregation prompts", unit="set", disable=not progress):
        g, prob = samples[s["problem_id"]], problems[s["problem_id"]]
        idx = s["candidate_ids"]
        shown = confidence_values(g["conf"][idx], calibration, scale)
        args = (prob["problem"], [g["final_text"][i] for i in idx], shown)
        kw = dict(token_budget=token_budget, tokenizer=tokenizer, scale=scale, style=style)
        prompt = build_aggregation_prompt(*args, show_confidence=show_confidence, **kw)
        noconf = build_aggregation_prompt(*args, show_confidence=False, **kw)
        rows.append({"prompt": prompt, "prompt_noconf": noconf, "answer": str(prob["answer"]),
                     "problem_id": s["problem_id"], "k": s["k"], "difficulty": s["difficulty"],
                     "candidate_ids": [int(g["sample_idx"][i]) for i in idx],
                     "confidences": shown})
    return rows


def sets_table(sets: list[dict], rows: list[dict], val_ids: set[str]) -> pa.Table:
    """The chosen sets as a table (candidate_ids are sample_idx values), with their split."""
    return pa.Table.from_pylist(
        [{"problem_id": r["problem_id"], "k": r["k"], "difficulty": r["difficulty"],
          "split": "val" if r["problem_id"] in val_ids else "train",
          "candidate_ids": r["candidate_ids"], "any_correct": s["any_correct"],
          "confidences": r["confidences"]} for s, r in zip(sets, rows)],
        schema=pa.schema([("problem_id", pa.string()), ("k", pa.int32()),
                          ("difficulty", pa.string()), ("split", pa.string()),
                          ("candidate_ids", pa.list_(pa.int32())), ("any_correct", pa.bool_()),
                          ("confidences", pa.list_(pa.float64()))]))


def prompt_lengths(prompts: list[str], tokenizer, batch: int = 1024) -> np.ndarray:
    """Token counts, batched (a fast tokenizer encodes a batch in parallel)."""
    out: list[int] = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start:start + batch], add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in enc)
    return np.asarray(out, dtype=np.int64)


def _length_stats(lengths: np.ndarray) -> dict[str, float] | None:
    if not lengths.size:
        return None
    return {"mean": float(lengths.mean()), "p50": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}


def report(sets: list[dict], rows: list[dict], val_ids: set[str], tokenizer,
           counts: dict | None = None, *, decontaminated: list[str] | None = None,
           traces: dict | None = None) -> dict[str, Any]:
    by = defaultdict(lambda: {"hard": 0, "easy": 0, "any_correct": 0})
    for s in sets:
        b = by[s["k"]]
        b[s["difficulty"]] += 1
        b["any_correct"] += s["any_correct"]
    lengths = prompt_lengths([r["prompt"] for r in rows], tokenizer)
    per_k = {}
    for k in sorted(by):
        b = by[k]
        total = b["hard"] + b["easy"]
        per_k[str(k)] = {"sets": total, "hard": b["hard"], "easy": b["easy"],
                         "oracle_ceiling": b["any_correct"] / total if total else None,
                         **({"before_mix": counts[k]} if counts and k in counts else {})}
    in_val = np.array([r["problem_id"] in val_ids for r in rows], dtype=bool)
    return {
        "sets": len(sets), "train_rows": int((~in_val).sum()), "val_rows": int(in_val.sum()),
        "problems": len({s["problem_id"] for s in sets}), "val_problems": len(val_ids),
        "by_k": per_k,
        "prompt_tokens": _length_stats(lengths),
        "prompt_tokens_by_k": {str(k): _length_stats(lengths[np.array(
            [r["k"] == k for r in rows], dtype=bool)]) for k in sorted(by)},
        "decontaminated_problems": sorted(decontaminated or []),
        "traces": traces,
    }


def report_markdown(rep: dict[str, Any]) -> str:
    lines = ["# Curation report", "",
             f"{rep['sets']} aggregation sets over {rep['problems']} problems: "
             f"{rep['train_rows']} train rows, {rep['val_rows']} validation rows "
             f"({rep['val_problems']} validation problems, none of them in train).",
             "", "| k | sets | hard | easy | drawn | easy drawn | oracle ceiling | "
                 "prompt tokens mean | max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, b in rep["by_k"].items():
        oc = "n/a" if b["oracle_ceiling"] is None else f"{100 * b['oracle_ceiling']:.1f}%"
        mix = b.get("before_mix", {})
        pt = rep["prompt_tokens_by_k"].get(k) or {}
        lines.append(f"| {k} | {b['sets']} | {b['hard']} | {b['easy']} | "
                     f"{mix.get('drawn', 'n/a')} | {mix.get('easy_available', 'n/a')} | {oc} | "
                     f"{pt.get('mean', float('nan')):.0f} | {pt.get('max', 'n/a')} |")
    if rep["prompt_tokens"]:
        p = rep["prompt_tokens"]
        lines += ["", f"Prompt length in tokens (aggregator's tokenizer, before the chat "
                      f"template): mean {p['mean']:.0f}, median {p['p50']:.0f}, "
                      f"p95 {p['p95']:.0f}, max {p['max']}."]
    if rep.get("decontaminated_problems") is not None:
        gone = rep["decontaminated_problems"]
        lines += ["", f"Decontamination: {len(gone)} training problem(s) overlap a benchmark "
                      f"problem and were left out" + (f" ({', '.join(gone)})." if gone else ".")]
    tr = rep.get("traces")
    if tr and tr["samples"]:
        lines += ["", f"Confidence over {tr['samples']} training samples ({tr['correct']} "
                      f"correct; median {tr['tokens_median']:.0f} tokens): "
                      f"{100 * tr['shorter_than_window']:.1f}% of the traces are shorter than "
                      f"one window of {tr['window']} tokens (their four statistics all equal "
                      f"the mean); conf_bottom10 differs from conf_mean on "
                      f"{100 * tr['bottom10_differs_from_mean']:.1f}%.", "",
                  "| statistic | AUROC for a correct sample |", "|---|---|"]
        for c, a in tr["auroc"].items():
            lines.append(f"| {c} | {'n/a' if a is None else f'{a:.3f}'} |")
        lines += ["", "AUROC: the chance that a random correct sample has a higher value than "
                      "a random wrong one (0.5 = no signal; n/a when all samples are right or "
                      "all wrong)."]
    lines += ["", "A set is hard when its majority answer is wrong. All hard sets are kept, "
                  "plus easy sets up to the configured share of them. The oracle ceiling is the "
                  "share of sets with at least one correct candidate: the best any aggregator "
                  "that only picks among its candidates could do."]
    return "\n".join(lines) + "\n"


def drop_contaminated(samples: dict[str, dict], decontam_path: str) -> list[str]:
    """Remove the problems the decontamination file lists; returns their ids."""
    try:
        dropped = [str(d["id"]) for d in json.loads(Path(decontam_path).read_text())["dropped"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(decontam_path, f"not a decontamination report ({e})",
                        field="dropped") from e
    gone = [pid for pid in dropped if pid in samples]
    for pid in gone:
        del samples[pid]
    return gone


def no_sets_message(path: str, counts: dict, k_values: list[int], n_problems: int) -> str:
    """Why build_sets gave nothing, from its per-k counts: too few samples, or no hard set
    (easy sets are kept in proportion to the hard ones)."""
    if not n_problems:
        return (f"no aggregation sets from {path}: no problem left (the samples are empty, "
                f"or decontamination dropped every problem)")
    if all(counts[k]["drawn"] == 0 for k in k_values):
        return (f"no aggregation sets from {path}: every problem has fewer samples than each "
                f"k in curation.k_values={list(k_values)}")
    drawn = sum(counts[k]["drawn"] for k in k_values)
    return (f"no aggregation sets from {path}: none of the {drawn} sets drawn is hard (the "
            f"majority answer is right in every one), and easy sets are kept only as "
            f"curation.easy_percent of the hard ones: the solver is right on every problem, "
            f"so this pool cannot train an aggregator (use harder problems or more samples)")


def check_split(rows: list[dict], val_ids: set[str], val_fraction: float, path: str) -> None:
    """Training must not be empty: name the key that emptied it."""
    problems = {r["problem_id"] for r in rows}
    if problems and problems <= val_ids:
        raise DataError(path, f"curation.val_fraction={val_fraction} puts all {len(problems)} "
                        f"problem(s) with aggregation sets into validation, leaving no training "
                        f"rows: lower curation.val_fraction or curate more problems",
                        field="problem_id")


def trace_report(samples_path: str, window: int, problem_ids: set[str] | None = None
                 ) -> dict[str, Any]:
    """The traces behind the confidence: how many are shorter than one window (their
    four statistics are all the mean) and each statistic's AUROC for a correct sample."""
    cols = ["problem_id", "n_tokens", "correct", *METRIC_COLUMNS.values()]
    t = read_parquet(samples_path, cols).to_pydict()
    keep = np.array([problem_ids is None or p in problem_ids for p in t["problem_id"]],
                    dtype=bool)
    n_tokens = np.asarray(t["n_tokens"], dtype=np.int64)[keep]
    correct = np.asarray(t["correct"], dtype=bool)[keep]
    stats = {c: np.asarray(t[c], dtype=np.float64)[keep] for c in METRIC_COLUMNS.values()}
    n = int(keep.sum())
    differs = (np.abs(stats["conf_bottom10"] - stats["conf_mean"]) > 1e-9) if n else np.zeros(0)
    return {
        "samples": n, "correct": int(correct.sum()), "window": window,
        "tokens_median": float(np.median(n_tokens)) if n else None,
        "shorter_than_window": float((n_tokens < window).mean()) if n else None,
        "bottom10_differs_from_mean": float(differs.mean()) if n else None,
        "auroc": {c: auroc(v, correct) for c, v in stats.items()},
    }


def load_problems(dataset_path: str) -> dict[str, dict]:
    """The normalized dataset by id (fields id, problem, answer: see DESIGN.md)."""
    out = {}
    for lineno, r in iter_jsonl(dataset_path):
        for field in ("id", "problem", "answer"):
            if r.get(field) is None:
                raise DataError(dataset_path, "missing value", row=lineno, field=field)
        out[str(r["id"])] = r
    return out
