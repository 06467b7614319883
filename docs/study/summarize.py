"""The figures docs/study.md quotes from a study working directory: job times from the
rules' benchmark files, training reward by quarter of the run, and the held-out rows.

    .venv/bin/python docs/study/summarize.py results/study-arith

Reads only what the pipeline wrote (logs/timings/**.tsv, results/train/*/train_log.jsonl,
results/report/summary.csv and paired_differences.csv), reads what each aggregator
wrote against the candidates it was shown, and re-grades the saved held-out
aggregations and samples under the current grading rule (an integer gold answered by an
unevaluated computation such as "3 - 2" is wrong), which only turns right into wrong, so
runs graded before that rule can be read on today's terms."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
from confagg.grading import cheap_key, restates_a_computation  # noqa: E402

METHODS = ("single", "majority", "weighted", "conf_agg", "agglm", "agg_prompted")


def job_times(workdir: Path) -> None:
    wall = cpu = 0.0
    for tsv in sorted((workdir / "logs" / "timings").rglob("*.tsv")):
        header, *rows = [line.split("\t") for line in tsv.read_text().splitlines()]
        row = dict(zip(header, rows[-1]))
        seconds = float(row["s"])
        cpu_seconds = float(row["cpu_time"]) if row.get("cpu_time", "NA") not in ("NA", "-") else 0.0
        wall, cpu = wall + seconds, cpu + cpu_seconds
        if seconds > 30:
            name = tsv.relative_to(workdir / "logs" / "timings")
            print(f"{str(name):72s} {seconds / 60:6.1f} min  (CPU {cpu_seconds / 60:6.1f})")
    print(f"job time {wall / 60:.1f} min, CPU {cpu / 60:.1f} min")


def rewards(workdir: Path) -> None:
    for log in sorted((workdir / "results" / "train").glob("*/train_log.jsonl")):
        steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        reward = [s["reward"] for s in steps if "reward" in s]
        quarter = max(1, len(reward) // 4)
        means = [sum(reward[i:i + quarter]) / len(reward[i:i + quarter])
                 for i in range(0, len(reward), quarter)]
        print(f"{log.parent.name}: {len(reward)} steps, reward by {quarter} steps: "
              + " / ".join(f"{m:.2f}" for m in means))


def points(row: dict, key: str) -> str:
    return f"{100 * float(row[key]):+.1f}"


def held_out(workdir: Path) -> None:
    report = workdir / "results" / "report"
    for row in csv.DictReader(open(report / "summary.csv")):
        if row["method"] in METHODS:
            line = (f"{row['benchmark']} {row['method']} m={row['budget']}: "
                    f"{100 * float(row['accuracy']):.1f} "
                    f"[{100 * float(row['ci_low']):.1f}, {100 * float(row['ci_high']):.1f}]")
            if row.get("diff"):
                line += (f"  vs {row['diff_ref']}: {points(row, 'diff')} "
                         f"[{points(row, 'diff_low')}, {points(row, 'diff_high')}]")
            print(line)
    for row in csv.DictReader(open(report / "paired_differences.csv")):
        print(f"{row['method']} - {row['baseline']} m={row['budget']}: {points(row, 'diff')} "
              f"[{points(row, 'diff_low')}, {points(row, 'diff_high')}] {row['verdict']}")


def gold_answers(workdir: Path, benchmark: str) -> dict[str, str]:
    gold = {}
    for line in open(workdir / "resources" / "datasets" / f"{benchmark}.jsonl"):
        row = json.loads(line)
        gold[row["id"]] = row["answer"]
    return gold


def right_now(gold: dict[str, str], d: pd.DataFrame) -> np.ndarray:
    """The saved verdicts under the current grading rule (restating a computation for an
    integer gold is wrong; it only turns right into wrong)."""
    return np.array([bool(c) and not restates_a_computation(gold[p], str(a))
                     for p, a, c in zip(d.problem_id, d.answer, d.correct)])


def held_out_answers(workdir: Path, benchmark: str = "arith_heldout"):
    """The benchmark's samples and each aggregation file, read once, each with `right`:
    its saved verdict under the current grading rule."""
    gold = gold_answers(workdir, benchmark)
    samples = pd.read_parquet(workdir / "results/generate/smollm2-135m" / benchmark / "samples.parquet",
                              columns=["problem_id", "sample_idx", "answer", "correct"])
    samples["right"] = right_now(gold, samples)
    aggregations = {}
    for path in sorted((workdir / "results/evaluate").glob(f"*/{benchmark}/aggregations/*.parquet")):
        d = pd.read_parquet(path)
        d["right"] = right_now(gold, d)
        aggregations[path.stem] = d
    return samples, aggregations


def regraded(samples: pd.DataFrame, aggregations: dict[str, pd.DataFrame]) -> None:
    print(f"re-graded: single {100 * samples.correct.mean():.1f} -> {100 * samples.right.mean():.1f}")
    per_problem = {}
    for name, d in aggregations.items():
        for m, g in d.groupby("budget"):
            per_problem[name, m] = g.groupby("problem_id")["right"].mean()
            print(f"re-graded: {name} m={m}: {100 * g.correct.mean():.1f} -> {100 * g.right.mean():.1f}")
    rng = np.random.default_rng(0)
    for method, baseline in (("conf_agg", "agg_prompted"), ("conf_agg", "agglm")):
        for (name, m), series in per_problem.items():
            if name != method or (baseline, m) not in per_problem:
                continue
            diff = (series - per_problem[baseline, m].reindex(series.index)).to_numpy()
            boot = rng.choice(diff, size=(1000, diff.size)).mean(axis=1)
            low, high = np.percentile(boot, [2.5, 97.5])
            print(f"re-graded: {method} - {baseline} m={m}: {100 * diff.mean():+.1f} "
                  f"[{100 * low:+.1f}, {100 * high:+.1f}] (paired bootstrap over problems)")


def behaviour(samples: pd.DataFrame, aggregations: dict[str, pd.DataFrame]) -> None:
    """What each aggregator wrote, against the candidates it read: how often it gave an
    answer, took one of its candidates' answers (equal values, as `cheap_key` sees them)
    or wrote another, and how often any candidate was right (the ceiling of a picker);
    verdicts under the current grading rule."""
    cand = {(p, i): (a, c) for p, i, a, c in zip(samples.problem_id, samples.sample_idx,
                                                   samples.answer, samples.right)}
    for name, d in aggregations.items():
        for m, g in d.groupby("budget"):
            answered = picked = picked_right = other_right = any_right = right_with = 0
            for p, ids, a, ok in zip(g.problem_id, g.candidate_ids, g.answer, g.right):
                theirs = [cand[p, int(i)] for i in ids]
                with_right = any(c for _, c in theirs)
                any_right += with_right
                right_with += bool(ok) and with_right
                if not isinstance(a, str):  # None, read by pandas as NaN
                    continue
                answered += 1
                if cheap_key(a) in {cheap_key(x) for x, _ in theirs if isinstance(x, str)}:
                    picked += 1
                    picked_right += bool(ok)
                else:
                    other_right += bool(ok)
            n = len(g)
            print(f"behaviour: {name} m={m}: answered {100 * answered / n:.1f}%, took a "
                  f"candidate's answer {100 * picked / n:.1f}% (right {100 * picked_right / n:.1f}), "
                  f"wrote another {100 * (answered - picked) / n:.1f}% (right "
                  f"{100 * other_right / n:.1f}); a candidate right {100 * any_right / n:.1f}%; "
                  f"right on those sets {100 * right_with / max(any_right, 1):.1f}%, on the others "
                  f"{100 * (g.right.sum() - right_with) / max(n - any_right, 1):.1f}%")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    workdir = Path(sys.argv[1])
    job_times(workdir)
    rewards(workdir)
    held_out(workdir)
    samples, aggregations = held_out_answers(workdir)
    regraded(samples, aggregations)
    behaviour(samples, aggregations)


if __name__ == "__main__":
    main()
