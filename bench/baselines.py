"""What the project is timed against: DeepConf-like confidence loops and naive serial
math-verify, beside the project's own confidence path."""

from __future__ import annotations


def project_confidence(comps, k: int, window: int) -> list[dict]:
    """What the generate rule does per completion (generation.generate_shard)."""
    from confagg.confidence import trace_stats
    from confagg.generation import completion_confidence

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
