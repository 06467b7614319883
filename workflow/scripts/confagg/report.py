"""Stage 4 outputs: metrics per benchmark, the summary table, the headline and plots.

A metrics row is {benchmark, method, budget, accuracy, ci_low, ci_high, mean_tokens,
n_problems, diff_ref, diff, diff_low, diff_high}: accuracy in [0, 1] at budget m (solver
samples for the model-free methods, candidates shown for the aggregators), its 95%
bootstrap interval, and the mean generated tokens per problem behind it (solver plus
aggregator). An aggregator's row also holds its paired difference from the reference
(`diff_ref`, e.g. "majority@8": majority voting at the largest budget) on the same
problems, with a 95% paired bootstrap interval; empty for the model-free methods.

A paired row (PAIRED_COLUMNS) compares two aggregators at the same m on the same
problems and candidate sets (confagg.methods.COMPARISONS): conf_agg - agg_prompted is
the value of training, conf_agg - agglm the value of confidence.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pyarrow as pa

from .estimators import MODEL_FREE
from .io import atomic_write_text
from .methods import AGG_METHODS, COMPARISONS

SUMMARY_COLUMNS = ["benchmark", "method", "budget", "accuracy", "ci_low", "ci_high",
                   "mean_tokens", "diff_ref", "diff", "diff_low", "diff_high"]
AGGREGATORS = tuple(AGG_METHODS)
METHOD_ORDER = (*MODEL_FREE, *AGGREGATORS)
METRICS_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("method", pa.string()), ("budget", pa.int32()),
    ("accuracy", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("mean_tokens", pa.float64()), ("n_problems", pa.int32()),
    ("diff_ref", pa.string()), ("diff", pa.float64()), ("diff_low", pa.float64()),
    ("diff_high", pa.float64()),
])
PAIRED_COLUMNS = ["benchmark", "method", "baseline", "question", "budget", "n_problems",
                  "diff", "diff_low", "diff_high", "verdict"]
PAIRED_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("method", pa.string()), ("baseline", pa.string()),
    ("question", pa.string()), ("budget", pa.int32()), ("n_problems", pa.int32()),
    ("diff", pa.float64()), ("diff_low", pa.float64()), ("diff_high", pa.float64()),
])
# One fixed colour per method, the same in every panel and both plots (tab10 has ten).
COLORS = dict(zip(METHOD_ORDER, [f"C{i}" for i in range(10)]))
# An aggregator "matches" the reference when the lower bound of the paired 95% interval
# of its difference is above -MATCH_MARGIN (accuracy as a fraction: 0.02 = 2 points).
MATCH_MARGIN = 0.02


def metrics_table(benchmark: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"benchmark": benchmark, **r} for r in rows],
                                schema=METRICS_SCHEMA)


def paired_table(benchmark: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"benchmark": benchmark, **r} for r in rows],
                                schema=PAIRED_SCHEMA)


def _rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _ordered(methods) -> list[str]:
    return sorted(set(methods), key=_rank)


def _paired(r: dict) -> bool:
    return r.get("diff_ref") is not None and r.get("diff_low") is not None


# verdict -> how the headline says it
VERDICTS = {"beats": "beats", "matches": "matches", "falls short": "falls short of",
            "not distinguishable": "is not distinguishable from"}


def verdict(diff_low: float, diff_high: float, margin: float = MATCH_MARGIN) -> str:
    """What a paired 95% interval of (method - reference) allows one to say (VERDICTS)."""
    if diff_low > 0:
        return "beats"
    if diff_low > -margin:
        return "matches"
    if diff_high < 0:
        return "falls short"
    return "not distinguishable"


def _points(r: dict) -> str:
    return (f"{100 * r['diff']:+.1f} points [{100 * r['diff_low']:+.1f}, "
            f"{100 * r['diff_high']:+.1f}]")


def headline(rows: list[dict], method: str = "conf_agg", margin: float = MATCH_MARGIN) -> str:
    """The smallest m at which `method` matches or beats (verdict) its reference, majority
    voting at the largest budget, by the paired interval, and its token cost against that
    vote; otherwise the verdict at every m (rows of one benchmark)."""
    agg = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
    if not agg:
        return f"{method} was not evaluated (evaluation.agg_methods)"
    paired = [r for r in agg if _paired(r)]
    if not paired:
        return f"{method} has no paired comparison with majority voting"
    ref_name = paired[0]["diff_ref"]
    ref_method, _, ref_budget = ref_name.partition("@")
    ref = next((r for r in rows if r["method"] == ref_method
                and str(r["budget"]) == ref_budget), None)
    ref_text = f"{ref_name} ({100 * ref['accuracy']:.1f}%)" if ref else ref_name
    rule = (f"paired 95% intervals over {paired[0]['n_problems']} problems; matches: lower "
            f"bound above {-100 * margin:g} points, beats: above 0")
    for r in paired:
        said = verdict(r["diff_low"], r["diff_high"], margin)
        if said in ("beats", "matches"):
            cost = ""
            if ref and ref["mean_tokens"]:
                cost = (f", at {r['mean_tokens'] / ref['mean_tokens']:.2f}x its tokens "
                        f"({r['mean_tokens']:.0f} vs {ref['mean_tokens']:.0f} per problem)")
            return (f"{method} with m={r['budget']} candidates {VERDICTS[said]} {ref_text} with "
                    f"{100 * r['accuracy']:.1f}%, difference {_points(r)}{cost} ({rule})")
    each = "; ".join(f"m={r['budget']}: {100 * r['accuracy']:.1f}%, {_points(r)}, "
                     f"{VERDICTS[verdict(r['diff_low'], r['diff_high'], margin)]} it"
                     for r in paired)
    return f"{method} does not match {ref_text} at any m ({each}; {rule})"


def summary_csv(rows: list[dict]) -> str:
    """The summary table as CSV text (benchmark, then method order, then budget)."""
    rows = sorted(rows, key=lambda r: (r["benchmark"], _rank(r["method"]), r["budget"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                    for k in SUMMARY_COLUMNS for v in [r.get(k)]})
    return buf.getvalue()


def _pair_rank(r: dict) -> tuple:
    pairs = [(a, b) for a, b, _ in COMPARISONS]
    key = (r["method"], r["baseline"])
    return (pairs.index(key) if key in pairs else len(pairs), key, r["budget"])


def paired_csv(paired: list[dict], margin: float = MATCH_MARGIN) -> str:
    """The paired differences between aggregators as CSV text, with each verdict."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRED_COLUMNS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in sorted(paired, key=lambda r: (r["benchmark"], *_pair_rank(r))):
        row = {**r, "verdict": verdict(r["diff_low"], r["diff_high"], margin)}
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                    for k in PAIRED_COLUMNS for v in [row.get(k)]})
    return buf.getvalue()


def paired_markdown(paired: list[dict], margin: float = MATCH_MARGIN) -> list[str]:
    """One benchmark's table of paired differences between aggregators (lines)."""
    if not paired:
        return []
    budgets = sorted({r["budget"] for r in paired})
    lines = ["", "Paired differences between aggregators at the same m (points; the same "
                 f"problems and candidate sets, {paired[0]['n_problems']} problems):", "",
             "| method - baseline | " + " | ".join(f"m={b}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    pairs = sorted({(r["method"], r["baseline"], r["question"]) for r in paired},
                   key=lambda p: _pair_rank({"method": p[0], "baseline": p[1], "budget": 0}))
    for a, b, question in pairs:
        cells = {r["budget"]: f"{_points(r).replace(' points', '')} "
                              f"{verdict(r['diff_low'], r['diff_high'], margin)}"
                 for r in paired if (r["method"], r["baseline"]) == (a, b)}
        lines.append(f"| {a} - {b} ({question}) | "
                     + " | ".join(cells.get(m, "") for m in budgets) + " |")
    return lines


def summary_markdown(rows: list[dict], margin: float = MATCH_MARGIN,
                     paired: list[dict] | None = None) -> str:
    """Per benchmark: the headline, accuracy with its interval, each aggregator's paired
    difference from the reference, the paired differences between aggregators at the
    same m (`paired`), and tokens per problem."""
    between = paired or []
    lines = ["# Conf-AggLLM evaluation", "",
             "Accuracy (%) with its 95% bootstrap interval over problems, by method and budget "
             "m: solver samples for the voting methods, candidates shown to the aggregator "
             f"for {', '.join(f'`{m}`' for m in AGGREGATORS)}. Tokens are the generated "
             "tokens per problem behind each point (solver plus aggregator).", "",
             "Each aggregator is compared with majority voting at the largest budget on the "
             "same problems: the mean per-problem difference in points with a 95% paired "
             "bootstrap interval (problems resampled with both their values). It *matches* "
             f"when the interval's lower bound is above {-100 * margin:g} points, *beats* when "
             "above 0, *falls short* when the whole interval is below 0, and is *not "
             "distinguishable* otherwise.", "",
             "Aggregators are also compared with each other at the same m, on the same "
             "problems and the same seeded candidate sets, with the same paired interval and "
             "verdicts: `conf_agg - agg_prompted` is the value of training, `conf_agg - "
             "agglm` (AggLM, trained on the same sets without confidence) the value of "
             "confidence.", ""]
    for bench in sorted({r["benchmark"] for r in rows}):
        br = [r for r in rows if r["benchmark"] == bench]
        budgets = sorted({r["budget"] for r in br})
        n_problems = max(r.get("n_problems", 0) for r in br)
        header = "| method | " + " | ".join(f"m={b}" for b in budgets) + " |"
        rule = "|---|" + "---|" * len(budgets)
        lines += [f"## {bench} ({n_problems} problems)", "",
                  f"**Headline:** {headline(br)}.", "", "Accuracy (%):", "", header, rule]
        for meth in _ordered(r["method"] for r in br):
            cells = {r["budget"]: f"{100 * r['accuracy']:.1f} [{100 * r['ci_low']:.1f}, "
                                  f"{100 * r['ci_high']:.1f}]"
                     for r in br if r["method"] == meth}
            lines.append(f"| {meth} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        paired = [r for r in br if _paired(r)]
        refs = sorted({r["diff_ref"] for r in paired})
        if paired:
            lines += ["", f"Paired difference from {', '.join(refs)} (points):", "", header,
                      rule]
        for meth in _ordered(r["method"] for r in paired):
            cells = {r["budget"]: f"{_points(r).replace(' points', '')} "
                                  f"{verdict(r['diff_low'], r['diff_high'], margin)}"
                     for r in paired if r["method"] == meth}
            lines.append(f"| {meth} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        lines += paired_markdown([r for r in between if r["benchmark"] == bench], margin)
        lines += ["", "Generated tokens per problem:", "", header, rule]
        for meth in _ordered(r["method"] for r in br):
            cells = {r["budget"]: f"{r['mean_tokens']:.0f}" for r in br if r["method"] == meth}
            lines.append(f"| {meth} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def overlap_markdown(overlaps: list[dict]) -> str:
    """The contamination section: each benchmark's problems that training problems overlap."""
    lines = ["## Overlap with the training problems", ""]
    for o in overlaps:
        ids = o["overlapping_benchmark_ids"]
        state = (f"**{len(ids)} overlap** the training problems ({', '.join(ids[:10])}"
                 f"{', ...' if len(ids) > 10 else ''}); its scores are not clean"
                 if ids else "none overlaps")
        lines.append(f"- {o['benchmark']}: of {o['benchmark_problems']} problems, {state} "
                     f"(same normalized text or a shared {o['ngram']}-word run, against the "
                     f"{o['training_problems']} training problems kept).")
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict], csv_path: str | Path, md_path: str | Path,
                  overlaps: list[dict] | None = None, paired: list[dict] | None = None,
                  paired_csv_path: str | Path | None = None) -> None:
    atomic_write_text(csv_path, summary_csv(rows))
    if paired_csv_path is not None:
        atomic_write_text(paired_csv_path, paired_csv(paired or []))
    md = summary_markdown(rows, paired=paired)
    if overlaps:
        md += "\n" + overlap_markdown(overlaps)
    atomic_write_text(md_path, md)


def _compact(value: float, _pos=None) -> str:
    """Tick labels such as 50, 2k, 1.5M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def plot(rows: list[dict], path: str | Path, x: str) -> None:
    """One panel per benchmark (up to three a row), a line per method with its 95%
    interval shaded; x is "budget" (samples m) or "mean_tokens"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if x not in ("budget", "mean_tokens"):
        raise ValueError(f"x must be 'budget' or 'mean_tokens', not {x!r}")
    benches = sorted({r["benchmark"] for r in rows})
    if not benches:
        raise ValueError("no metrics to plot")
    ncols = min(len(benches), 3)
    nrows = math.ceil(len(benches) / ncols)
    n_methods = len({r["method"] for r in rows})
    legend_cols = min(n_methods, 2 * ncols + 1)
    legend_in = 0.3 + 0.2 * math.ceil(n_methods / legend_cols)  # room for the shared legend
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows + legend_in),
                             squeeze=False)
    for ax in axes.flat[len(benches):]:
        ax.remove()
    handles = {}
    for ax, bench in zip(axes.flat, benches):
        br = [r for r in rows if r["benchmark"] == bench]
        for meth in _ordered(r["method"] for r in br):
            pts = sorted((r for r in br if r["method"] == meth), key=lambda r: r[x])
            xs = [r[x] for r in pts]
            color = COLORS.get(meth)
            (line,) = ax.plot(xs, [100 * r["accuracy"] for r in pts],
                              "--" if meth in MODEL_FREE else "-", marker="o", ms=3,
                              color=color, label=meth)
            ax.fill_between(xs, [100 * r["ci_low"] for r in pts],
                            [100 * r["ci_high"] for r in pts], color=line.get_color(),
                            alpha=0.08, linewidth=0)
            handles.setdefault(meth, line)
        values = [r[x] for r in br]
        if min(values) > 0:
            ax.set_xscale("log", base=2 if x == "budget" else 10)
        if x == "budget":
            ticks = sorted(set(values))
            ax.set_xticks(ticks, [str(t) for t in ticks])
        elif min(values) > 0:
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_compact))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{bench} ({max(r.get('n_problems', 0) for r in br)} problems)")
        ax.set_xlabel("samples m (aggregators: candidates)" if x == "budget"
                      else "generated tokens per problem")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    order = _ordered(handles)
    fig.legend([handles[m] for m in order], order, loc="lower center", ncol=legend_cols,
               frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
