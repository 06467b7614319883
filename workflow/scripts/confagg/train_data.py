"""The prompts a training run reads: a seeded draw from the curated train/val splits.

`training.max_prompts` (and `max_val_prompts`) cap the rows; the draw keeps the split's
mix, i.e. the share of every (k, difficulty) stratum that curation made (AggLM's
hard sets plus easy_percent% easy ones, per k), by largest-remainder allocation. Each
stratum is drawn with its own seeded generator, and the chosen rows keep their file
order, so a run's prompts depend only on the split, the cap and the seed: the AggLM
baseline's run (no confidence) draws the same sets as the confidence run.

`training.easy_share` sets the training prompts' share of easy sets instead, per k: as
many rows as keep that share (all the scarcer kind, the other drawn). Curation keeps
every hard set, so a weak solver's pool is mostly hard; the study's probes learned
fastest with half of the sets easy (docs/study.md).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from .io import DataError, read_jsonl

DIFFICULTIES = ("hard", "easy")


def strata(rows: list[dict[str, Any]], path: str) -> dict[tuple[int, str], list[int]]:
    """Row indexes by (k, difficulty); a row without them is an error naming it."""
    out: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        k = r.get("k")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise DataError(path, f"k must be a positive integer, got {k!r}", row=i + 1, field="k")
        d = r.get("difficulty")
        if d not in DIFFICULTIES:
            raise DataError(path, f"difficulty must be one of {DIFFICULTIES}, got {d!r}",
                            row=i + 1, field="difficulty")
        out[(k, d)].append(i)
    return dict(out)


def allocate(sizes: dict[tuple[int, str], int], cap: int) -> dict[tuple[int, str], int]:
    """Rows per stratum: `cap` split in proportion to `sizes` (largest remainder; ties go
    to the stratum that sorts first), never more than a stratum holds."""
    total = sum(sizes.values())
    if cap >= total:
        return dict(sizes)
    exact = {s: cap * n / total for s, n in sizes.items()}
    take = {s: int(x) for s, x in exact.items()}
    order = sorted(sizes, key=lambda s: (-(exact[s] - take[s]), s))
    for s in order[:cap - sum(take.values())]:
        take[s] += 1
    return take


def _nearest_count(whole: int, share: float) -> int:
    """Rows of one kind beside `whole` rows of the other such that they are nearest
    `share` of all (share < 1); ties go to the larger count."""
    x = whole * share / (1 - share)
    return min((math.floor(x), math.ceil(x)),
               key=lambda n: (abs(n / max(n + whole, 1) - share), -n))


def share_sizes(sizes: dict[tuple[int, str], int], easy_share: float
                ) -> dict[tuple[int, str], int]:
    """Rows per stratum such that, for each k, easy sets are `easy_share` of the rows:
    the most rows the strata allow (every row of the scarcer kind)."""
    out = {}
    for k in sorted({k for k, _ in sizes}):
        hard, easy = sizes.get((k, "hard"), 0), sizes.get((k, "easy"), 0)
        # keep the scarcer kind whole; of the other, the count nearest the share
        if easy_share < 1 and hard * easy_share <= easy * (1 - easy_share):
            n_hard, n_easy = hard, min(easy, _nearest_count(hard, easy_share))
        else:
            n_hard, n_easy = min(hard, _nearest_count(easy, 1 - easy_share)), easy
        out[(k, "hard")], out[(k, "easy")] = n_hard, n_easy
    return {s: n for s, n in out.items() if s in sizes}


def draw(rows: list[dict[str, Any]], cap: int | None, seed: int, path: str,
         easy_share: float | None = None) -> list[dict[str, Any]]:
    """At most `cap` rows (all when `cap` is None), the (k, difficulty) mix kept, or with
    `easy_share` set, each k's rows that share easy."""
    groups = strata(rows, path)
    sizes = {s: len(v) for s, v in groups.items()}
    if easy_share is not None:
        sizes = share_sizes(sizes, easy_share)
        if not sum(sizes.values()):
            have = ", ".join(f"k={k} {d}: {len(v)}" for (k, d), v in sorted(groups.items()))
            raise DataError(path, f"training.easy_share={easy_share} leaves no rows: no k has "
                            f"both kinds of set it needs ({have})", field="difficulty")
    elif cap is None or cap >= len(rows):
        return list(rows)
    take = sizes if cap is None else allocate(sizes, cap)
    chosen: list[int] = []
    for (k, d), idx in sorted(groups.items()):
        chosen += random.Random(f"{seed}:{k}:{d}").sample(idx, take[(k, d)])
    return [rows[i] for i in sorted(chosen)]


def mix(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per stratum, as 'k=2 hard': n (for logs and the plan)."""
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[f"k={r['k']} {r['difficulty']}"] += 1
    return dict(sorted(counts.items()))


def run_prompts(rows: list[dict[str, Any]], show_confidence: bool, path: str
                ) -> list[dict[str, Any]]:
    """The rows as the run reads them: one `prompt` (the curated one, or for a run without
    confidence the curated `prompt_noconf` and no confidence values), the answer and the
    set's metadata. A missing prompt is an error naming the row."""
    key = "prompt" if show_confidence else "prompt_noconf"
    out = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get(key), str) or not r[key]:
            raise DataError(path, f"{key} must be a non-empty string (curated by "
                            "rule aggregation_sets)", row=i, field=key)
        row = {k: v for k, v in r.items() if k not in ("prompt", "prompt_noconf")}
        if not show_confidence:
            row.pop("confidences", None)
        out.append({"prompt": r[key], **row})
    return out


def select_file(src: str, dst: str, cap: int | None, seed: int, *,
                show_confidence: bool = True, easy_share: float | None = None
                ) -> dict[str, Any]:
    """Write the drawn rows of `src` to `dst` with the run's prompt (`run_prompts`);
    returns the mix before and after. Runs with and without confidence draw the same
    rows."""
    from .io import write_jsonl

    rows = read_jsonl(src)
    if not rows:
        raise DataError(src, "no rows")
    prompts = run_prompts(rows, show_confidence, src)
    kept = draw(prompts, cap, seed, src, easy_share)
    write_jsonl(dst, kept)
    return {"path": src, "rows": len(rows), "kept": len(kept), "mix": mix(rows),
            "kept_mix": mix(kept)}
