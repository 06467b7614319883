"""Stage 4: the aggregator reads m candidates (with or without their confidence) and
writes a final answer, for m in the configured budgets.

For each benchmark problem and m, S sets of m candidates are drawn from the solver's
pool (seeded per problem and m, so every aggregator method sees the same sets), and
each set's prompt (the shared builder, confidence on the scale the aggregator was
trained on, `curation.confidence_scale`: the training pool's percentile or the raw
statistic; candidates' final parts only) is answered A times by vLLM. The prompt is the
one the aggregator was trained on: a single user message through the model's chat
template, no system prompt (as TRL and OpenRLHF's `apply_chat_template` render the
curated prompts). Finished batches of sets are saved as parts under a progress
folder, so a killed job resumes with the sets it had not finished.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa

from .curation import METRIC_COLUMNS, draw_sets, load_problems, load_samples
from .io import DataError, read_parquet, write_parquet

log = logging.getLogger(__name__)

AGG_SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("budget", pa.int32()), ("set_idx", pa.int32()),
    ("candidate_ids", pa.list_(pa.int32())), ("agg_idx", pa.int32()), ("text", pa.string()),
    ("answer", pa.string()), ("correct", pa.bool_()), ("grade_status", pa.string()),
    ("finish_reason", pa.string()), ("agg_tokens", pa.int32()), ("solver_tokens", pa.int32()),
])


def metric_name(column_or_name: str) -> str:
    """'bottom10' for 'bottom10' or 'conf_bottom10'."""
    by_column = {v: k for k, v in METRIC_COLUMNS.items()}
    if column_or_name in METRIC_COLUMNS:
        return column_or_name
    if column_or_name in by_column:
        return by_column[column_or_name]
    raise ValueError(f"unknown confidence metric {column_or_name!r} "
                     f"(known: {', '.join(METRIC_COLUMNS)})")


def agg_sets(samples: dict, budgets: list[int], n_sets: int, seed: int) -> list[dict]:
    """The (problem, m, set) triples to aggregate, as positions in each problem's pool;
    m above a pool's size is left out (logged)."""
    out = []
    for m in sorted(set(budgets)):
        too_small = 0
        for pid in sorted(samples):
            n = len(samples[pid]["cluster"])
            if m > n:
                too_small += 1
                continue
            rng = random.Random(f"eval:{seed}:{m}:{pid}")
            for s_idx, members in enumerate(draw_sets(n, m, n_sets, rng)):
                out.append({"problem_id": pid, "budget": m, "set_idx": s_idx,
                            "candidate_ids": list(members)})
        if too_small:
            log.warning("m=%d: %d problem(s) have fewer samples than m and are left out",
                        m, too_small)
    return out


def model_fingerprint(model_path: str) -> list:
    """What identifies the weights: a local folder's files (name, size, mtime), else the
    Hub id. A retrained model at the same path must not reuse old progress."""
    p = Path(model_path)
    if not p.is_dir():
        return [model_path]
    return [model_path] + sorted(
        (str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
        for f in p.rglob("*") if f.is_file())


def progress_fingerprint(*, model_path: str, evaluation: dict, show_confidence: bool,
                         token_budget: int | None, calibration_path: str,
                         sets: list[dict], confidence_scale: str = "percentile") -> dict:
    """Everything a saved part depends on: parts made under other settings are discarded."""
    # the batch size changes no result, so a resumed job may use another
    settings = {k: v for k, v in evaluation.items() if k != "agg_batch_sets"}
    return {"model": model_fingerprint(model_path), "eval": settings,
            "conf": show_confidence, "scale": confidence_scale, "token_budget": token_budget,
            "calibration": Path(calibration_path).read_text(),
            "sets": [(s["problem_id"], s["budget"], s["candidate_ids"]) for s in sets]}


def _done_keys(progress) -> set[tuple[int, str, int]]:
    done = set()
    for part in progress.parts():
        t = read_parquet(part, ["budget", "problem_id", "set_idx"]).to_pydict()
        done.update(zip(t["budget"], t["problem_id"], t["set_idx"]))
    return done


def run_aggregation(*, samples_path: str, dataset_path: str, calibration_path: str,
                    model_path: str, vllm_cfg: dict, evaluation: dict, show_confidence: bool,
                    token_budget: int | None, grading: dict, out_path: str,
                    progress_dir: str, confidence_scale: str = "percentile",
                    prompt_style: str = "agglm") -> int:
    """Aggregate every set of every budget; writes AGG_SCHEMA rows to out_path."""
    from tqdm import tqdm

    from .generation import (
        ShardProgress,
        chat_prompts,
        check_model_path,
        make_engine,
        request_bar,
        split_final,
    )
    from .grading import Grader
    from .prompts import ConfidenceCalibration, build_aggregation_prompt, confidence_values

    cal = ConfidenceCalibration.from_json(calibration_path)
    samples = load_samples(samples_path, metric_name(cal.metric))
    problems = load_problems(dataset_path)
    missing = sorted(set(samples) - set(problems))
    if missing:
        raise DataError(dataset_path, f"{len(missing)} problem(s) of {samples_path} are not in "
                        f"the dataset, e.g. {missing[:3]}", field="id")
    sets = agg_sets(samples, list(evaluation["agg_budgets"]), evaluation["agg_sets"],
                    evaluation["seed"])
    boxed_only = bool(grading.get("require_boxed", True))  # as the reward extracts
    # parts extracted the other way are not reused (the default keeps earlier parts valid)
    fp_eval = evaluation if boxed_only else {**evaluation, "require_boxed": False}
    if prompt_style != "agglm":  # the default adds no key: earlier parts stay valid
        fp_eval = {**fp_eval, "prompt_style": prompt_style}
    progress = ShardProgress(progress_dir, progress_fingerprint(
        model_path=model_path, evaluation=fp_eval, show_confidence=show_confidence,
        token_budget=token_budget, calibration_path=calibration_path, sets=sets,
        confidence_scale=confidence_scale))
    done = _done_keys(progress)
    todo = [s for s in sets if (s["budget"], s["problem_id"], s["set_idx"]) not in done]
    log.info("%d sets over budgets %s; %d done before, %d to do", len(sets),
             sorted({s["budget"] for s in sets}), len(sets) - len(todo), len(todo))
    if todo:
        check_model_path(model_path)  # before the slow vLLM import
        from vllm import SamplingParams

        llm = make_engine(model_path, vllm_cfg, seed=evaluation["seed"])
        tokenizer = llm.get_tokenizer()
        max_len = vllm_cfg.get("max_model_len")
        params = SamplingParams(n=evaluation["agg_samples"],
                                temperature=evaluation["agg_temperature"],
                                top_p=evaluation["agg_top_p"], top_k=evaluation["agg_top_k"],
                                max_tokens=evaluation["agg_max_tokens"])
        batch_size = evaluation["agg_batch_sets"]
        bar = tqdm(total=len(todo), desc="aggregation sets", unit="set")
        with Grader(workers=grading["workers"], timeout_s=grading["timeout_s"]) as grader:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                texts = []
                for s in batch:
                    g, idx = samples[s["problem_id"]], s["candidate_ids"]
                    texts.append(build_aggregation_prompt(
                        problems[s["problem_id"]]["problem"], [g["final_text"][i] for i in idx],
                        confidence_values(g["conf"][idx], cal, confidence_scale),
                        show_confidence=show_confidence, token_budget=token_budget,
                        tokenizer=tokenizer, scale=confidence_scale, style=prompt_style))
                prompts = chat_prompts(tokenizer, texts, None, {})
                for s, prompt in zip(batch, prompts):
                    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                    if max_len and n_prompt >= max_len:
                        raise ValueError(
                            f"the aggregation prompt of problem {s['problem_id']} (m="
                            f"{s['budget']}) has {n_prompt} tokens, beyond vllm.max_model_len="
                            f"{max_len}: lower curation.prompt_token_budget or raise "
                            f"max_model_len")
                outputs = llm.generate(prompts, params, use_tqdm=request_bar())
                records, finals = [], []
                for s, out in zip(batch, outputs):
                    g = samples[s["problem_id"]]
                    solver_tokens = int(sum(g["n_tokens"][i] for i in s["candidate_ids"]))
                    for a_idx, comp in enumerate(out.outputs):
                        finals.append(split_final(comp.text))
                        records.append({**s, "candidate_ids": [int(g["sample_idx"][i])
                                                               for i in s["candidate_ids"]],
                                        "agg_idx": a_idx, "text": comp.text,
                                        "finish_reason": comp.finish_reason,
                                        "agg_tokens": len(comp.token_ids),
                                        "solver_tokens": solver_tokens})
                answers = grader.extract(finals, boxed_only=boxed_only)
                grades = grader.grade([(problems[r["problem_id"]]["answer"], a)
                                       for r, a in zip(records, answers)])
                for r, a, gr in zip(records, answers, grades):
                    r.update(answer=a, correct=gr.correct, grade_status=gr.status)
                progress.write(pa.Table.from_pylist(records, schema=AGG_SCHEMA))
                bar.update(len(batch))
        bar.close()
    table = progress.collect(AGG_SCHEMA).sort_by(
        [("budget", "ascending"), ("problem_id", "ascending"), ("set_idx", "ascending"),
         ("agg_idx", "ascending")])
    write_parquet(out_path, table)
    progress.clear()
    acc = np.mean(table.column("correct").to_pylist()) if table.num_rows else float("nan")
    log.info("%d aggregations, %.1f%% correct", table.num_rows, 100 * acc)
    return table.num_rows


def per_problem_accuracy(table: pa.Table, path: str = "aggregations") -> tuple[dict, dict]:
    """({m: {problem: [correct...]}}, {m: [solver + aggregator tokens per aggregation]})."""
    needed = ["problem_id", "budget", "correct", "agg_tokens", "solver_tokens"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(path, f"missing column(s) {missing}", field=missing[0])
    d = table.select(needed).to_pydict()
    acc: dict[int, dict[str, list[float]]] = {}
    tokens: dict[int, list[float]] = {}
    for pid, m, ok, at, st in zip(*(d[c] for c in needed)):
        acc.setdefault(m, {}).setdefault(pid, []).append(float(bool(ok)))
        tokens.setdefault(m, []).append(float(at + st))
    return acc, tokens


def pools_from_samples(samples_path: str, metric: str) -> dict:
    """The benchmark pool per problem, for the model-free estimators."""
    from .estimators import ProblemPool

    samples = load_samples(samples_path, metric_name(metric), with_text=False)
    return {pid: ProblemPool(cluster=g["cluster"], correct=g["correct"], conf=g["conf"],
                             tokens=np.asarray(g["n_tokens"]))
            for pid, g in samples.items()}
