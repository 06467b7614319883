"""`make plan`: the figures follow from the config (and from files once they exist)."""

from __future__ import annotations

import math
import subprocess
import sys

import yaml
from confagg.config import load_config
from confagg.io import write_jsonl
from confagg.plan import SAFETY, plan, sets_per_problem
from conftest import REPO


def test_full_scale_plan_follows_the_config(tmp_path):
    config = load_config(REPO / "config.yaml")
    known = {name: 10 + i for i, name in enumerate(config["datasets"])}
    p = plan(config, known=known, workdir=tmp_path, throughput=500.0, gpus=4)
    g, t, c = config["generation"], config["training"], config["curation"]
    for name, d in p["datasets"].items():
        n = config["datasets"][name].get("n_samples") or g["n"]
        assert d["problems"] == known[name] and d["samples"] == known[name] * n
        assert d["max_generated_tokens"] == d["samples"] * g["max_tokens"]
    assert set(p["datasets"]) == {config["train_dataset"], *config["benchmarks"]}
    # With no curated file: every drawn set kept, validation problems removed.
    p_train = known[config["train_dataset"]]
    per_problem = sum(min(c["sets_per_problem"], math.comb(g["n"], k)) for k in c["k_values"])
    rows = (p_train - round(c["val_fraction"] * p_train)) * per_problem
    assert p["curated_train_rows"] == rows and p["curated_rows_from"] == "upper bound"
    assert p["training_prompts"] == min(rows, t["max_prompts"])
    assert p["training_steps"] == math.ceil(p["training_prompts"] / t["rollout_batch_size"])
    assert p["rollouts"] == p["training_prompts"] * t["group_size"]
    assert p["max_training_tokens"] == p["rollouts"] * t["max_new_tokens"]
    assert p["training"]["max_hours"] == p["max_training_tokens"] / (500.0 * 4) / 3600
    # config.yaml evaluates agglm: the AggLM run is trained too, each run its own job
    assert p["training"]["runs"] == [t["run"], t["agglm_run"]]
    assert p["training"]["total_hours"] == 2 * p["training"]["max_hours"]
    only_conf = {**config, "evaluation": {**config["evaluation"], "agg_methods": ["conf_agg"]}}
    assert plan(only_conf, known=known, workdir=tmp_path)["training"]["runs"] == [t["run"]]


def test_the_default_budget_fits_the_slurm_limit():
    """config.yaml's training.max_prompts keeps the OpenRLHF job within the SLURM profile's
    time limit at the assumed throughput, on DeepScaleR's ~40k problems."""
    config = load_config(REPO / "config.yaml")
    limit = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())[
        "set-resources"]["train_openrlhf"]["runtime"] / 60
    p = plan(config, known={config["train_dataset"]: 40315})
    assert p["training_prompts"] == config["training"]["max_prompts"]
    assert p["training"]["slurm_limit_hours"] == limit
    assert p["training"]["fits"] and p["training"]["max_hours"] <= SAFETY * limit
    doubled = {**config, "training": {**config["training"],
                                      "max_prompts": 2 * config["training"]["max_prompts"]}}
    assert plan(doubled, known={config["train_dataset"]: 40315})["training"]["fits"] is False


def test_counts_come_from_files_once_they_exist(tmp_path):
    config = load_config(REPO / "config.yaml", REPO / "profiles/local/embedded.yaml")
    ds = tmp_path / "resources" / "datasets"
    write_jsonl(ds / "arith_test.jsonl", [{"id": str(i)} for i in range(7)])
    cur = tmp_path / "results" / "curate" / config["solver"] / config["train_dataset"]
    write_jsonl(cur / "train.jsonl", [{"prompt": "p", "answer": "1"}] * 5)
    p = plan(config, workdir=tmp_path)
    assert p["datasets"]["arith_test"]["problems"] == 7
    assert p["datasets"]["arith_train"]["problems"] == \
        config["datasets"]["arith_train"]["builtin"]["n_problems"]
    assert p["curated_train_rows"] == 5 and p["training_prompts"] == 5
    assert p["training_steps"] == config["training"]["trl"]["max_steps"]  # TRL: by steps
    assert sets_per_problem(config, 1) == min(config["curation"]["sets_per_problem"], 1)


def test_training_prompts_follow_the_easy_share_once_curated(tmp_path):
    config = load_config(REPO / "config.yaml", REPO / "profiles/local/embedded.yaml")
    config["training"].update(easy_share=0.5, max_prompts=None)
    cur = tmp_path / "results" / "curate" / config["solver"] / config["train_dataset"]
    write_jsonl(cur / "train.jsonl", [{"prompt": "p", "answer": "1", "k": 1,
                                       "difficulty": "hard"}] * 9 +
                [{"prompt": "p", "answer": "1", "k": 1, "difficulty": "easy"}] * 3)
    p = plan(config, workdir=tmp_path)
    assert p["curated_train_rows"] == 12 and p["training_prompts"] == 6


def test_make_plan_prints_the_figures():
    proc = subprocess.run(["make", "-s", "plan", f"PY={sys.executable}",
                           "PLAN_ARGS=--configfile profiles/local/embedded.yaml"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = load_config(REPO / "config.yaml", REPO / "profiles/local/embedded.yaml")
    n = config["datasets"]["arith_train"]["builtin"]["n_problems"]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("arith_train"))
    assert line.split()[1:3] == [str(n), "builtin"], line
    assert "training prompts:" in proc.stdout and "training steps:" in proc.stdout
    assert f"training runs: 2 ({config['training']['run']}, " in proc.stdout
