"""The AggLM baseline: a second GRPO run on the same curated sets with the confidence
left out of the prompt (config key training.agglm_run, method `agglm`).

Unit-level: the config check, the run's prompts drawn from the curated rows (the same
sets, prompt without confidence), and what `snakemake -n` plans with and without
`agglm` in evaluation.agg_methods."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from confagg import curation
from confagg.config import ConfigError, load_config
from confagg.io import DataError, read_jsonl, write_jsonl
from confagg.prompts import ConfidenceCalibration, build_aggregation_prompt
from confagg.train_data import select_file
from conftest import BASE_CONFIGS, REPO, job_counts, load_script, run_snakemake


def overlay(tmp_path, data, name="overlay.yaml") -> list:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return [*BASE_CONFIGS, path]


# ------------------------------------------------------------------------------ config

def test_agglm_run_default_and_validation(tmp_path):
    assert load_config(REPO / "config.yaml")["training"]["agglm_run"] == "agglm-grpo"
    cfg = load_config(*overlay(tmp_path, {"training": {"agglm_run": "my-agglm"}}))
    assert cfg["training"]["agglm_run"] == "my-agglm"
    with pytest.raises(ConfigError, match=r"config key 'training.agglm_run': 'confagg-grpo' "
                                          r"is also training.run"):
        load_config(*overlay(tmp_path, {"training": {"agglm_run": "confagg-grpo"}}))
    with pytest.raises(ConfigError, match=r"config key 'training.agglm_run'"):
        load_config(*overlay(tmp_path, {"training": {"agglm_run": "a/b"}}))


def test_config_files_train_and_evaluate_agglm():
    """config.yaml and the embedded default (and so `make run`) evaluate agglm beside
    conf_agg."""
    full = load_config(REPO / "config.yaml")["evaluation"]["agg_methods"]
    assert full == ["conf_agg", "agglm", "conf_agg_noconf", "agg_prompted"]
    embedded = load_config(REPO / "config.yaml", REPO / "profiles/local/embedded.yaml")
    assert embedded["evaluation"]["agg_methods"] == ["conf_agg", "agglm", "agg_prompted"]


# ----------------------------------------------------------------- curated rows, prompts

class CharTokenizer:
    """One token per character: enough for the builder's token budget."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def curated_rows(tmp_path, token_budget=None, tokenizer=None, style="agglm"):
    """Curated rows from hand-made samples through curation's own functions."""
    rng = np.random.default_rng(0)
    rows = []
    for p in range(6):
        for i in range(4):
            ok = bool(rng.random() < 0.5)
            rows.append({"problem_id": f"p{p}", "sample_idx": i,
                         "final_text": f"Step one of p{p} sample {i}. " * 6
                                       + f"So the answer is {12 if ok else 13}.",
                         "answer": "12" if ok else "13", "correct": ok,
                         "cluster": 0 if ok else 1, "n_tokens": 40,
                         **{c: float(rng.uniform(0, 10)) for c in
                            curation.METRIC_COLUMNS.values()}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    samples = curation.load_samples(str(tmp_path / "s.parquet"), "mean")
    sets = curation.build_sets(samples, k_values=[1, 2], sets_per_problem=3, easy_ratio=1.0,
                               seed=0, on_too_few="error", path="s.parquet")
    cal = ConfidenceCalibration.fit(np.concatenate([g["conf"] for g in samples.values()]),
                                    "conf_mean")
    problems = {pid: {"id": pid, "problem": f"What is {pid}?", "answer": "12"}
                for pid in samples}
    made = curation.make_rows(sets, samples, problems, cal, show_confidence=True,
                              scale="percentile", token_budget=token_budget,
                              tokenizer=tokenizer, style=style)
    return made, samples, problems


@pytest.mark.parametrize("style", ["agglm", "brief"])
def test_curated_rows_carry_the_prompt_without_confidence(tmp_path, style):
    tok = CharTokenizer()
    rows, samples, problems = curated_rows(tmp_path, token_budget=700, tokenizer=tok,
                                           style=style)
    assert rows
    for r in rows:
        g = samples[r["problem_id"]]
        idx = [list(g["sample_idx"]).index(s) for s in r["candidate_ids"]]
        args = (problems[r["problem_id"]]["problem"], [g["final_text"][i] for i in idx],
                r["confidences"])
        kw = dict(token_budget=700, tokenizer=tok, scale="percentile", style=style)
        # the shared builder, the same candidates and the same budget, with and without
        assert r["prompt"] == build_aggregation_prompt(*args, show_confidence=True, **kw)
        assert r["prompt_noconf"] == build_aggregation_prompt(*args, show_confidence=False, **kw)
        assert "confidence" in r["prompt"] and "confidence" not in r["prompt_noconf"]
        assert len(r["prompt_noconf"]) <= 700
        assert len(re.findall(r"^(Candidate solution|Solution) \d+:$", r["prompt_noconf"],
                              flags=re.M)) == r["k"]


@pytest.mark.parametrize("easy_share", [None, 0.5])
def test_agglm_prompts_are_the_same_sets_without_confidence(tmp_path, easy_share):
    rows, _, _ = curated_rows(tmp_path)
    src = tmp_path / "train.jsonl"
    write_jsonl(src, rows)
    conf_dst, agglm_dst = tmp_path / "conf.jsonl", tmp_path / "agglm.jsonl"
    cap = len(rows) - 3  # a real draw, not the whole file
    conf_mix = select_file(str(src), str(conf_dst), cap, 5, show_confidence=True,
                           easy_share=easy_share)
    agglm_mix = select_file(str(src), str(agglm_dst), cap, 5, show_confidence=False,
                            easy_share=easy_share)
    assert conf_mix == agglm_mix
    conf, agglm = read_jsonl(conf_dst), read_jsonl(agglm_dst)
    assert len(conf) == len(agglm) and 0 < len(conf) <= cap
    assert easy_share is not None or len(conf) == cap
    by_set = {(r["problem_id"], tuple(r["candidate_ids"])): r for r in rows}
    for c, a in zip(conf, agglm):
        for key in ("problem_id", "answer", "k", "difficulty", "candidate_ids"):
            assert c[key] == a[key], key
        curated = by_set[(c["problem_id"], tuple(c["candidate_ids"]))]
        assert c["prompt"] == curated["prompt"]
        assert a["prompt"] == curated["prompt_noconf"]
        # one prompt per row (the trainers read `prompt`); no confidence in the AggLM run
        assert "prompt_noconf" not in c and "prompt_noconf" not in a
        assert "confidence" not in json.dumps(a)
        assert "(confidence: " in c["prompt"]


def test_a_curated_row_without_the_prompt_noconf_is_named(tmp_path):
    rows, _, _ = curated_rows(tmp_path)
    del rows[2]["prompt_noconf"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl, row 3, field 'prompt_noconf'"):
        select_file(str(tmp_path / "train.jsonl"), str(tmp_path / "o.jsonl"), None, 0,
                    show_confidence=False)
    # the confidence run does not read it
    select_file(str(tmp_path / "train.jsonl"), str(tmp_path / "o.jsonl"), None, 0,
                show_confidence=True)


def test_training_prompts_script_takes_the_runs_prompt(tmp_path, monkeypatch):
    script = load_script("training_prompts")
    monkeypatch.setattr(script, "setup_logging", lambda smk: logging.getLogger("test"))
    rows, _, _ = curated_rows(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", rows)
    for show in (True, False):
        out = tmp_path / f"{show}.jsonl"
        script.main(SimpleNamespace(
            input=[str(tmp_path / "train.jsonl")],
            output=SimpleNamespace(rows=str(out), mix=str(tmp_path / f"{show}_mix.json")),
            params=SimpleNamespace(cap=None, seed=0, show_confidence=show,
                                  easy_share=None),
            wildcards=SimpleNamespace(split="train", run="r")))
        got = read_jsonl(out)
        assert [r["prompt"] for r in got] == [r["prompt" if show else "prompt_noconf"]
                                              for r in rows]


# ------------------------------------------------------------------- the plan (snakemake -n)

@pytest.mark.parametrize("methods,runs", [(["conf_agg", "agglm"], 2), (["conf_agg"], 1)])
def test_dry_run_trains_the_agglm_run_only_when_evaluated(tmp_path, methods, runs):
    files = overlay(tmp_path, {"evaluation": {"agg_methods": methods}})
    proc = run_snakemake(tmp_path / "work", "-n", configfiles=files, lock=False, timeout=600)
    jobs = job_counts(proc.stdout)
    assert jobs["train_trl"] == runs and jobs["training_prompts"] == runs, jobs
    assert jobs["aggregate"] == len(methods), jobs
    planned = set(re.findall(r"results/train/([^/\s]+)/model", proc.stdout))
    assert planned == ({"confagg-grpo", "agglm-grpo"} if runs == 2 else {"confagg-grpo"})


# ------------------------------------------------------------------ training curves

def colour_pixels(png, rgb) -> int:
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    return int((np.abs(img - np.array(rgb) / 255).max(axis=2) < 0.08).sum())


def test_training_curves_show_each_trained_run(tmp_path, monkeypatch):
    script = load_script("training_curves")
    monkeypatch.setattr(script, "setup_logging", lambda smk: logging.getLogger("test"))
    logs = {}
    for run, scale in (("confagg-grpo", 1.0), ("agglm-grpo", 0.5)):
        logs[run] = tmp_path / f"{run}.jsonl"
        logs[run].write_text("".join(json.dumps(
            {"step": s, "reward": scale * s / 10, "kl": 0.01 * s * scale,
             "completions/mean_length": 20 + s * scale, "grad_norm": scale / s}) + "\n"
            for s in (1, 2, 3)))
    blue, orange = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's C0 and C1
    for runs in (["confagg-grpo"], ["confagg-grpo", "agglm-grpo"]):
        png = tmp_path / f"{len(runs)}.png"
        script.main(SimpleNamespace(
            input=SimpleNamespace(history=[str(logs[r]) for r in runs], keys=lambda: ["history"]),
            output=SimpleNamespace(png=str(png)),
            params=SimpleNamespace(runs=runs, tensorboards=[])))
        assert colour_pixels(png, blue) > 500
        # the second run's lines (and legend entry) only when it is trained
        assert (colour_pixels(png, orange) > 500) == (len(runs) == 2)
