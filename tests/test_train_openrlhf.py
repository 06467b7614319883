"""The OpenRLHF 0.11.2 command, checked by OpenRLHF's own argument parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from confagg.config import load_config
from confagg.train_openrlhf import REWARD_FILE, build_command, shell_command
from conftest import REPO, SNAKEMAKE

OPENRLHF = REPO / ".venv" / "openrlhf-0.11.2"


def parse_with_openrlhf(argv, tmp_path):
    if not (OPENRLHF / "openrlhf" / "cli" / "train_ppo_ray.py").exists():
        pytest.fail(f"{OPENRLHF} is missing: `make setup` installs OpenRLHF 0.11.2 there",
                    pytrace=False)
    out = tmp_path / "parsed.json"
    assert argv[1:3] == ["-m", "openrlhf.cli.train_ppo_ray"]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "openrlhf_parse.py"),
                           str(OPENRLHF), str(out), "--", *argv[3:]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def full_config():
    return load_config(REPO / "config.yaml")


def test_every_flag_is_accepted_and_parses_to_the_config(full_config, tmp_path):
    t = full_config["training"]
    argv = build_command(t, model_path="Qwen/Qwen2.5-1.5B-Instruct", train_path="d/train.jsonl",
                         val_path="d/val.jsonl", output_dir="results/train/r/model",
                         ckpt_dir="ck", n_gpus=4)
    a = parse_with_openrlhf(argv, tmp_path)
    assert a["algo"]["advantage"]["estimator"] == "group_norm"
    assert a["rollout"]["n_samples_per_prompt"] == t["group_size"] == 8
    assert a["algo"]["kl"] == {**a["algo"]["kl"], "init_coef": 0.001, "estimator": "k3",
                               "use_loss": True}
    assert a["actor"]["adam"]["lr"] == t["learning_rate"]
    assert a["actor"]["num_gpus_per_node"] == a["ref"]["num_gpus_per_node"] == 4
    assert a["vllm"]["num_engines"] == 4
    assert a["vllm"]["enable_sleep"] is True and a["train"]["colocate_all"] is True
    assert a["reward"]["remote_url"] == [str(REWARD_FILE)]  # OpenRLHF splits it on commas
    assert a["data"]["input_key"] == "prompt" and a["data"]["label_key"] == "answer"
    assert a["data"]["apply_chat_template"] is True
    assert a["data"]["prompt_dataset"].endswith("d/train.jsonl")
    assert a["eval"]["dataset"].endswith("d/val.jsonl")
    assert a["data"]["max_len"] == t["max_prompt_tokens"] + t["max_new_tokens"]
    assert a["rollout"]["max_new_tokens"] == t["max_new_tokens"]
    assert a["rollout"]["batch_size"] == t["rollout_batch_size"]
    assert a["train"]["batch_size"] == t["train_batch_size"]
    assert a["ds"]["zero_stage"] == 3
    assert a["ckpt"]["save_hf"] is True and a["ckpt"]["load_enable"] is True
    assert a["ckpt"]["output_dir"].endswith("results/train/r/model")
    assert a["critic"]["model_name_or_path"] is None  # GRPO: no critic


def test_job_gpus_and_overrides_reach_the_command(full_config, tmp_path):
    t = {**full_config["training"], "group_size": 16, "kl_coef": 0.0,
         "openrlhf": {**full_config["training"]["openrlhf"], "colocate_all": False,
                      "vllm_num_engines": 1, "zero_stage": 2,
                      "extra_args": ["--vllm.enforce_eager"]}}
    argv = build_command(t, model_path="m", train_path="a", val_path="b", output_dir="o",
                         ckpt_dir="c", n_gpus=2)
    a = parse_with_openrlhf(argv, tmp_path)
    assert a["rollout"]["n_samples_per_prompt"] == 16
    assert a["actor"]["num_gpus_per_node"] == 2 and a["vllm"]["num_engines"] == 1
    assert a["train"]["colocate_all"] is False and a["vllm"]["enable_sleep"] is False
    assert a["ds"]["zero_stage"] == 2 and a["vllm"]["enforce_eager"] is True


def test_nodes_reach_actor_ref_and_engines(full_config, tmp_path):
    t = {**full_config["training"],
         "openrlhf": {**full_config["training"]["openrlhf"], "num_nodes": 2}}
    argv = build_command(t, model_path="m", train_path="a", val_path="b", output_dir="o",
                         ckpt_dir="c", n_gpus=4)
    a = parse_with_openrlhf(argv, tmp_path)
    assert a["actor"]["num_nodes"] == a["ref"]["num_nodes"] == 2
    assert a["vllm"]["num_engines"] == 8  # one per GPU of the cluster


def test_a_wrong_flag_is_rejected_by_openrlhf(full_config, tmp_path):
    argv = build_command(full_config["training"], model_path="m", train_path="a",
                         val_path="b", output_dir="o", ckpt_dir="c", n_gpus=1)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "openrlhf_parse.py"),
                           str(OPENRLHF), str(tmp_path / "x.json"), "--", *argv[3:],
                           "--actor_learning_rate", "1e-6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --actor_learning_rate" in proc.stderr


def test_wandb_key_stays_out_of_the_command():
    line = shell_command(["python", "-m", "openrlhf.cli.train_ppo_ray"])
    assert line.endswith('${WANDB_API_KEY:+--logger.wandb.key "$WANDB_API_KEY"}')


def test_dry_run_shows_the_openrlhf_command(tmp_path):
    # The real CLI, called directly: run_snakemake would wait for the vLLM lock,
    # which a dry run does not need.
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "gpu4"), "-n", "-p",
           "results/train/confagg-grpo/model"]
    env = {**os.environ, "WANDB_API_KEY": "secret-key-123"}
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "python -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path " \
           "Qwen/Qwen2.5-1.5B-Instruct" in proc.stdout
    assert "--actor.num_gpus_per_node 4" in proc.stdout
    assert "secret-key-123" not in proc.stdout
