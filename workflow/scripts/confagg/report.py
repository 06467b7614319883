"""Stage 4 outputs: metrics per benchmark, the summary table, the headline and plots.

A metrics row is {benchmark, method, budget, accuracy, ci_low, ci_high, mean_tokens,
n_problems}: accuracy in [0, 1] at budget m (solver samples for the model-free
methods, candidates shown for the aggregators), its 95% bootstrap interval, and the
mean generated tokens per problem behind it (solver plus aggregator).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pyarrow as pa

from .estimators import MODEL_FREE
from .io import atomic_write_text

SUMMARY_COLUMNS = ["benchmark", "method", "budget", "accuracy", "ci_low", "ci_high",
                   "mean_tokens"]
AGGREGATORS = ("conf_agg", "conf_agg_noconf", "agg_prompted")
METHOD_ORDER = (*MODEL_FREE, *AGGREGATORS)
METRICS_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("method", pa.string()), ("budget", pa.int32()),
    ("accuracy", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("mean_tokens", pa.float64()), ("n_problems", pa.int32()),
])
# One fixed colour per method, the same in every panel and both plots (tab10 has ten).
COLORS = dict(zip(METHOD_ORDER, [f"C{i}" for i in range(10)]))


def metrics_table(benchmark: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"benchmark": benchmark, **r} for r in rows],
                                schema=METRICS_SCHEMA)


def _rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _ordered(methods) -> list[str]:
    return sorted(set(methods), key=_rank)


def headline(rows: list[dict], method: str = "conf_agg") -> str:
    """The smallest m at which `method` matches or beats majority voting at its largest
    budget, with its token cost against that majority vote (rows of one benchmark)."""
    maj = [r for r in rows if r["method"] == "majority"]
    agg = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
    if not maj:
        return "majority voting was not evaluated"
    top = max(maj, key=lambda r: r["budget"])
    if not agg:
        return f"{method} was not evaluated (evaluation.agg_methods)"
    for r in agg:
        if r["accuracy"] >= top["accuracy"] - 1e-12:
            ratio = r["mean_tokens"] / top["mean_tokens"] if top["mean_tokens"] else math.nan
            return (f"{method} with m={r['budget']} candidates reaches {100 * r['accuracy']:.1f}% "
                    f"against majority@{top['budget']} {100 * top['accuracy']:.1f}%, at "
                    f"{ratio:.2f}x its tokens ({r['mean_tokens']:.0f} vs "
                    f"{top['mean_tokens']:.0f} per problem)")
    best = max(agg, key=lambda r: (r["accuracy"], -r["budget"]))
    return (f"{method} does not reach majority@{top['budget']} ({100 * top['accuracy']:.1f}%); "
            f"its best is {100 * best['accuracy']:.1f}% at m={best['budget']}")


def summary_csv(rows: list[dict]) -> str:
    """The summary table as CSV text (benchmark, then method order, then budget)."""
    rows = sorted(rows, key=lambda r: (r["benchmark"], _rank(r["method"]), r["budget"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(r[k], 6) if isinstance(r[k], float) else r[k])
                    for k in SUMMARY_COLUMNS})
    return buf.getvalue()


def summary_markdown(rows: list[dict]) -> str:
    """Per benchmark: the headline, accuracy with its interval, and tokens per problem."""
    lines = ["# Conf-AggLLM evaluation", "",
             "Accuracy (%) with its 95% bootstrap interval over problems, by method and budget "
             "m: solver samples for the voting methods, candidates shown to the aggregator "
             "for `conf_agg`, `conf_agg_noconf` and `agg_prompted`. Tokens are the generated "
             "tokens per problem behind each point (solver plus aggregator).", ""]
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
        lines += ["", "Generated tokens per problem:", "", header, rule]
        for meth in _ordered(r["method"] for r in br):
            cells = {r["budget"]: f"{r['mean_tokens']:.0f}" for r in br if r["method"] == meth}
            lines.append(f"| {meth} | " + " | ".join(cells.get(b, "") for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def write_summary(rows: list[dict], csv_path: str | Path, md_path: str | Path) -> None:
    atomic_write_text(csv_path, summary_csv(rows))
    atomic_write_text(md_path, summary_markdown(rows))


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
                              "-" if meth in AGGREGATORS else "--", marker="o", ms=3,
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
