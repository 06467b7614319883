"""What the active config will cost, before anything runs (`make plan`).

Prints per dataset the problems and samples, the generated solver tokens (an upper
bound: every sample at generation.max_tokens), the curated rows (an upper bound from
the set counts, or the real count once curation has run), the training prompts, steps,
rollouts and tokens, and the training time at an assumed throughput against the SLURM
profile's time limit. docs/full-scale.md explains each figure.

    python -m confagg.plan [--configfile overlay.yaml ...] [--problems NAME=N ...]
                           [--throughput TOKENS_PER_GPU_S] [--gpus N]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import REPO, load_config
from .methods import training_runs

# End-to-end GRPO throughput assumed per GPU (generated tokens per second, generation
# and training together), from DeepScaleR-1.5B-Preview's published run; see
# docs/full-scale.md for the arithmetic. Replace it with your own measurement.
THROUGHPUT = 700.0
SAFETY = 0.85  # share of the time limit the plan may fill (start-up, validation, saves)


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def problems(config: dict[str, Any], name: str, known: dict[str, int], workdir: Path
             ) -> tuple[int | None, str]:
    """A dataset's problem count and where it comes from."""
    d = config["datasets"][name]
    if name in known:
        n, src = known[name], "--problems"
    elif (workdir / "resources" / "datasets" / f"{name}.jsonl").exists():
        n, src = count_lines(workdir / "resources" / "datasets" / f"{name}.jsonl"), "prepared"
    elif d["source"].startswith("builtin:"):
        n, src = int(d["builtin"]["n_problems"]), "builtin"
    else:
        n, src = None, "unknown"
    if d.get("limit") is not None:
        n, src = (d["limit"], "limit") if n is None else (min(n, d["limit"]), src)
    return n, src


def sets_per_problem(config: dict[str, Any], n_samples: int) -> int:
    """Aggregation sets curation draws per problem (all k): min(S, C(n, k)) each."""
    c = config["curation"]
    return sum(min(c["sets_per_problem"], math.comb(n_samples, k))
               for k in c["k_values"] if n_samples >= k)


def slurm_hours(rule: str) -> float | None:
    """The SLURM profile's time limit for `rule`, in hours."""
    path = REPO / "profiles" / "slurm" / "config.yaml"
    if not path.exists():
        return None
    prof = yaml.safe_load(path.read_text()) or {}
    minutes = (prof.get("set-resources", {}).get(rule, {}).get("runtime")
               or prof.get("default-resources", {}).get("runtime"))
    return minutes / 60 if minutes else None


def plan(config: dict[str, Any], *, known: dict[str, int] | None = None,
         workdir: Path = REPO, throughput: float = THROUGHPUT, gpus: int = 4
         ) -> dict[str, Any]:
    """The planned figures as a dict (None where a count is not known yet)."""
    known = known or {}
    g, t = config["generation"], config["training"]
    out: dict[str, Any] = {"datasets": {}}
    names = [config["train_dataset"], *[b for b in config["benchmarks"]
                                        if b != config["train_dataset"]]]
    for name in names:
        n, src = problems(config, name, known, workdir)
        per = config["datasets"][name].get("n_samples") or g["n"]
        samples = None if n is None else n * per
        out["datasets"][name] = {
            "problems": n, "problems_from": src, "samples_per_problem": per,
            "samples": samples,
            "max_generated_tokens": None if samples is None else samples * g["max_tokens"]}

    train = out["datasets"][config["train_dataset"]]
    curated = (workdir / "results" / "curate" / config["solver"] / config["train_dataset"]
               / "train.jsonl")
    if curated.exists():
        rows, rows_from = count_lines(curated), "curated"
    elif train["problems"] is not None:
        p = train["problems"]
        n_val = round(config["curation"]["val_fraction"] * p)
        rows = (p - n_val) * sets_per_problem(config, train["samples_per_problem"])
        rows_from = "upper bound"
    else:
        rows, rows_from = None, "unknown"
    out["curated_train_rows"], out["curated_rows_from"] = rows, rows_from

    cap = t["max_prompts"]
    if t["easy_share"] is not None and rows_from == "curated":
        from .io import read_jsonl
        from .train_data import share_sizes, strata

        sizes = {s: len(v) for s, v in strata(read_jsonl(curated), str(curated)).items()}
        rows = sum(share_sizes(sizes, t["easy_share"]).values())
    prompts = cap if rows is None else (rows if cap is None else min(rows, cap))
    out["training_prompts"] = prompts
    if t["trainer"] == "trl":
        steps = t["trl"]["max_steps"]
        rollouts = steps * t["trl"]["per_device_batch_size"] * t["trl"][
            "gradient_accumulation_steps"]
    else:
        steps = None if prompts is None else math.ceil(prompts / t["rollout_batch_size"]) * t[
            "epochs"]
        rollouts = None if prompts is None else prompts * t["group_size"] * t["epochs"]
    out["training_steps"], out["rollouts"] = steps, rollouts
    out["max_training_tokens"] = None if rollouts is None else rollouts * t["max_new_tokens"]
    rule = "train_trl" if t["trainer"] == "trl" else "train_openrlhf"
    limit = slurm_hours(rule)
    hours = (None if out["max_training_tokens"] is None or t["trainer"] == "trl"
             else out["max_training_tokens"] / (throughput * gpus) / 3600)
    # each run (the confidence run, and the AggLM run when agglm is evaluated) is a job
    runs = training_runs(config["evaluation"]["agg_methods"], run=t["run"],
                         agglm_run=t["agglm_run"])
    out["training"] = {"trainer": t["trainer"], "rule": rule, "throughput": throughput,
                       "gpus": gpus, "max_hours": hours, "slurm_limit_hours": limit,
                       "fits": None if hours is None or limit is None
                       else hours <= SAFETY * limit,
                       "runs": runs, "total_hours": None if hours is None else hours * len(runs)}
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "unknown"
    if isinstance(x, float):
        return f"{x:,.1f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render(p: dict[str, Any], config: dict[str, Any]) -> str:
    g, t = config["generation"], config["training"]
    lines = ["Plan for the active config", "",
             f"{'dataset':<14}{'problems':>12}  {'from':<10}{'x n':>6}{'samples':>14}"
             f"{'tokens <=':>18}"]
    for name, d in p["datasets"].items():
        lines.append(f"{name:<14}{_fmt(d['problems']):>12}  {d['problems_from']:<10}"
                     f"{d['samples_per_problem']:>6}{_fmt(d['samples']):>14}"
                     f"{_fmt(d['max_generated_tokens']):>18}")
    lines += ["", f"generated solver tokens: at most generation.max_tokens = {g['max_tokens']} "
                  "per sample",
              f"curated training rows: {_fmt(p['curated_train_rows'])} ({p['curated_rows_from']})",
              f"training prompts: {_fmt(p['training_prompts'])} "
              f"(training.max_prompts = {_fmt(t['max_prompts'])})"]
    tr = p["training"]
    lines.append(f"training runs: {len(tr['runs'])} ({', '.join(tr['runs'])}), one job each")
    if tr["trainer"] == "trl":
        lines.append(f"training steps: {_fmt(p['training_steps'])} (TRL: trl.max_steps), "
                     f"completions {_fmt(p['rollouts'])}")
    else:
        lines += [f"training steps: {_fmt(p['training_steps'])} = ceil(prompts / "
                  f"rollout_batch_size {t['rollout_batch_size']}) x epochs {t['epochs']}",
                  f"rollouts: {_fmt(p['rollouts'])} = prompts x group_size {t['group_size']}",
                  f"training tokens: at most {_fmt(p['max_training_tokens'])} = rollouts x "
                  f"max_new_tokens {t['max_new_tokens']}"]
        if tr["max_hours"] is not None:
            limit = tr["slurm_limit_hours"]
            verdict = ("" if tr["fits"] is None else
                       f" -> {'fits' if tr['fits'] else 'DOES NOT FIT'} {SAFETY:.0%} of the "
                       f"SLURM limit {limit:g} h ({tr['rule']})")
            lines.append(f"training time: at most {tr['max_hours']:,.1f} h per run at "
                         f"{tr['throughput']:g} tokens/s/GPU on {tr['gpus']} GPUs{verdict}; "
                         f"{tr['total_hours']:,.1f} h for the {len(tr['runs'])} run(s)")
    if any(d["problems"] is None for d in p["datasets"].values()):
        lines += ["", "unknown counts: run `snakemake resources/datasets/<name>.jsonl` first, "
                      "or pass --problems NAME=N"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m confagg.plan", description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="overlays on config.yaml")
    ap.add_argument("--problems", nargs="*", default=[], metavar="NAME=N",
                    help="problem counts of datasets not prepared yet")
    ap.add_argument("--throughput", type=float, default=THROUGHPUT,
                    help="generated tokens per second per GPU, generation and training together")
    ap.add_argument("--gpus", type=int, default=4, help="GPUs of the training job")
    args = ap.parse_args(argv)
    known = {}
    for item in args.problems:
        name, _, n = item.partition("=")
        if not n.isdigit():
            ap.error(f"--problems {item!r}: expected NAME=N")
        known[name] = int(n)
    config = load_config(REPO / "config.yaml", *args.configfile)
    unknown = sorted(set(known) - set(config["datasets"]))
    if unknown:
        ap.error(f"--problems: no dataset {unknown} in the config")
    p = plan(config, known=known, throughput=args.throughput, gpus=args.gpus)
    print(render(p, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
