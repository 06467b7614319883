"""Synthetic inputs: vLLM-shaped log-probs, a grading pool from MATH-500's answers, an
evaluation pool."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np


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

def eval_pools(n_problems: int, n_samples: int, seed: int = 0) -> dict:
    """A benchmark-like pool: per problem a few answer clusters of skewed sizes (the
    first right with the problem's accuracy), confidence higher for right samples,
    token counts of long reasoning traces."""
    from confagg.estimators import ProblemPool

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

