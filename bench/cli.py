"""`python -m bench`: arguments, the stages in order, bench.json and the table."""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import bench
from bench.common import REPO, SIZES, TARGETS, check
from bench.runner import grade_runner_entry, machine_info, run_stage, stage_child

STAGE_GROUPS = ["generation", "confidence", "grading", "storage", "evaluation", "online", "train"]


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
    if "train_full_seconds_per_step" in ex or "train_lora_seconds_per_step" in ex:
        cells = [f"{v} {ex[f'train_{v}_seconds_per_step']:.1f} s/step, CPU "
                 f"{ex[f'train_{v}_cpu_seconds_per_step']:.1f} s/step (first "
                 f"{ex[f'train_{v}_first_step_seconds']:.1f} s, "
                 f"{ex[f'train_{v}_trainable_params'] / 1e6:.2f}M trainable)"
                 for v in ("full", "lora") if f"train_{v}_seconds_per_step" in ex]
        lines.append("GRPO (TRL, CPU): " + "; ".join(cells))
        if "train_lora_cpu_step_ratio" in ex:
            lines.append(f"GRPO LoRA / full per step: wall {report['figures']['train_lora_step_ratio']:.2f}"
                         f", CPU {ex['train_lora_cpu_step_ratio']:.2f}")
    m = report["machine"]
    lines.append(f"machine: {m['cpu_count']} CPUs ({m['cpu']}), load average "
                 f"{m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench",
                                 description=bench.__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, one run, no vLLM engine (the generation figures are "
                         "skipped)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3; quick 1)")
    ap.add_argument("--out", default=str(REPO / "results" / "bench" / "bench.json"))
    ap.add_argument("--model", default=str(REPO / "resources" / "models" / "smollm2-135m"),
                    help="the prepared bundled model (snakemake resources/models/smollm2-135m)")
    ap.add_argument("--set", nargs="*", default=[], metavar="SIZE=N",
                    help=f"override sizes, e.g. gen_problems=4 (keys: {', '.join(SIZES['full'])})")
    ap.add_argument("--skip", nargs="*", default=[], choices=STAGE_GROUPS)
    ap.add_argument("--only", nargs="+", choices=STAGE_GROUPS,
                    help="run these stages only, e.g. --only train (GRPO steps, full vs LoRA)")
    ap.add_argument("--stage", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--grade-runner", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        stage_child(*args.stage)
        return 0
    if args.grade_runner:
        grade_runner_entry(*args.grade_runner)
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
    skip = set(args.skip) | ({"generation", "online", "train"} if args.quick else set())
    if args.only:
        skip |= set(STAGE_GROUPS) - set(args.only)
    if not {"generation", "online", "train"} <= skip and not (Path(args.model) / "config.json").exists():
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
        for stage in ("confidence", "grading", "evaluation", "generation", "storage", "online",
                      "train_full", "train_lora"):
            group = stage.split("_")[0]
            if group in skip:
                skipped[stage] = ("--quick: no vLLM engine or training" if args.quick
                                  else "--skip/--only")
                continue
            kw = {}
            if group in ("generation", "online", "train"):
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
    if "train_full_seconds_per_step" in extra and "train_lora_seconds_per_step" in extra:
        figures["train_lora_step_ratio"] = (extra["train_lora_seconds_per_step"]
                                            / extra["train_full_seconds_per_step"])
        extra["train_lora_cpu_step_ratio"] = (extra["train_lora_cpu_seconds_per_step"]
                                              / extra["train_full_cpu_seconds_per_step"])
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
    from confagg.io import atomic_write_text

    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(render_table(report))
    print(f"\nwrote {out}")
    return 0
