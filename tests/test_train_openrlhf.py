"""The OpenRLHF 0.11.2 command, checked by OpenRLHF's own parser, its post-parse checks
and train_ppo_ray's checks up to the vLLM engines (tests/openrlhf_parse.py); the seeded
prompt caps; the W&B key kept out of everything written."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from confagg.config import ConfigError, load_config
from confagg.io import DataError
from confagg.train_data import draw, share_sizes
from confagg.train_openrlhf import (
    REWARD_FILE,
    WANDB_KEY_PLACEHOLDER,
    adapter_dir,
    build_command,
    check_lengths,
    merge_command,
    shell_command,
)
from conftest import REPO, SNAKEMAKE

OPENRLHF = REPO / ".venv" / "openrlhf-0.11.2"
HARNESS = REPO / "tests" / "openrlhf_parse.py"
MARKER = "wandb-secret-marker-7f3a9c"


def harness(out, real_strategy=False):
    if not (OPENRLHF / "openrlhf" / "cli" / "train_ppo_ray.py").exists():
        pytest.fail(f"{OPENRLHF} is missing: `make setup` installs OpenRLHF 0.11.2 there",
                    pytrace=False)
    return [sys.executable, str(HARNESS), *(["--real-strategy"] if real_strategy else []),
            str(OPENRLHF), str(out), "--"]


def run_openrlhf(argv, tmp_path):
    """OpenRLHF's parser, post-parse checks and train()'s checks on `argv`."""
    assert argv[1:3] == ["-m", "openrlhf.cli.train_ppo_ray"]
    out = tmp_path / "parsed.json"
    proc = subprocess.run([*harness(out), *argv[3:]], capture_output=True, text=True,
                          timeout=120)
    return proc, (json.loads(out.read_text()) if proc.returncode == 0 else None)


def parse_with_openrlhf(argv, tmp_path):
    proc, parsed = run_openrlhf(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return parsed


@pytest.fixture(scope="module")
def full_config():
    return load_config(REPO / "config.yaml")


def command(t, n_gpus=4, **kw):
    paths = dict(model_path="Qwen/Qwen2.5-1.5B-Instruct", train_path="d/train.jsonl",
                 val_path="d/val.jsonl", output_dir="results/train/r/model", ckpt_dir="ck",
                 tensorboard_dir="logs/train/r/tensorboard", run="r")
    return build_command(t, n_gpus=n_gpus, **{**paths, **kw})


def with_openrlhf(t, **o):
    return {**t, "openrlhf": {**t["openrlhf"], **o}}


def test_every_flag_is_accepted_and_parses_to_the_config(full_config, tmp_path):
    t = full_config["training"]
    a = parse_with_openrlhf(command(t), tmp_path)
    assert a["algo"]["advantage"]["estimator"] == "group_norm"
    assert a["rollout"]["n_samples_per_prompt"] == t["group_size"] == 8
    assert a["algo"]["kl"] == {**a["algo"]["kl"], "init_coef": t["kl_coef"], "estimator": "k3",
                               "use_loss": True}
    assert a["actor"]["adam"]["lr"] == t["learning_rate"]
    assert a["actor"]["num_gpus_per_node"] == a["ref"]["num_gpus_per_node"] == 4
    assert a["vllm"]["num_engines"] == 4 and a["vllm"]["tensor_parallel_size"] == 1
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
    assert a["ckpt"]["load_enable"] is True
    assert a["ckpt"]["output_dir"].endswith("results/train/r/model")
    assert a["critic"]["model_name_or_path"] is None  # GRPO: no critic
    assert a["logger"]["tensorboard_dir"].endswith("logs/train/r/tensorboard")
    assert a["logger"]["wandb"]["run_name"] == "r"
    assert a["logger"]["wandb"]["key"] is None  # no key in the environment: W&B off


def test_the_lr_schedule_reaches_openrlhf(full_config, tmp_path):
    t = full_config["training"]
    assert t["lr_schedule"] is None  # OpenRLHF's own schedule
    a = parse_with_openrlhf(command(t), tmp_path)
    assert a["actor"]["lr_scheduler"] == "cosine_with_min_lr"
    a = parse_with_openrlhf(command({**t, "lr_schedule": "constant"}), tmp_path)
    assert a["actor"]["lr_scheduler"] == "constant"


def test_packing_and_the_token_budget(full_config, tmp_path):
    t = full_config["training"]
    a = parse_with_openrlhf(command(t), tmp_path)
    assert a["ds"]["packing_samples"] is True and a["train"]["dynamic_batch_enable"] is True
    assert a["train"]["micro_batch_size"] == 1
    budget = t["openrlhf"]["max_tokens_per_gpu"]
    assert a["train"]["max_tokens_per_gpu"] == budget >= a["data"]["max_len"]
    assert a["rollout"]["max_tokens_per_gpu"] == budget  # OpenRLHF's post-parse default
    assert a["ds"]["attn_implementation"].startswith("flash_attention")
    # The budget's default is one longest sequence.
    a = parse_with_openrlhf(command(with_openrlhf(t, max_tokens_per_gpu=None)), tmp_path)
    assert a["train"]["max_tokens_per_gpu"] == t["max_prompt_tokens"] + t["max_new_tokens"]
    with pytest.raises(ConfigError, match=r"^config key 'training.openrlhf.max_tokens_per_gpu'"):
        command(with_openrlhf(t, max_tokens_per_gpu=a["data"]["max_len"] - 1))


def test_sampling_caps_and_checkpoints(full_config, tmp_path):
    t = full_config["training"]
    a = parse_with_openrlhf(command(t), tmp_path)
    # Rollouts sample the whole softmax at the training temperature (the actor scores it so).
    assert a["rollout"]["top_p"] == 1.0 and a["rollout"]["temperature"] == t["temperature"]
    assert a["eval"]["temperature"] == t["temperature"]
    assert a["eval"]["n_samples_per_prompt"] == t["eval_samples"]
    assert a["data"]["max_samples"] == max(t["max_prompts"], t["max_val_prompts"])
    assert a["ckpt"]["max_num"] == t["openrlhf"]["max_ckpt_num"]
    assert a["ckpt"]["save_hf"] is False  # OpenRLHF never rotates the _hf copies
    a = parse_with_openrlhf(command({**t, "max_prompts": None, "max_val_prompts": None}), tmp_path)
    assert a["data"]["max_samples"] == 10**8  # OpenRLHF's default: no cap


@pytest.mark.parametrize("tp", [1, 2])
def test_engines_times_tensor_parallel_equals_the_gpus(full_config, tmp_path, tp):
    t = with_openrlhf(full_config["training"], vllm_tensor_parallel_size=tp)
    a = parse_with_openrlhf(command(t, n_gpus=4), tmp_path)  # train()'s assertion passed
    assert a["vllm"]["tensor_parallel_size"] == tp
    assert a["vllm"]["num_engines"] * tp == a["actor"]["num_nodes"] * a["actor"]["num_gpus_per_node"]
    two_nodes = with_openrlhf(t, num_nodes=2)
    a = parse_with_openrlhf(command(two_nodes, n_gpus=4), tmp_path)
    assert a["vllm"]["num_engines"] * tp == 8


def test_openrlhf_rejects_engines_that_do_not_cover_the_gpus(full_config, tmp_path):
    argv = command(with_openrlhf(full_config["training"], vllm_tensor_parallel_size=2))
    argv[argv.index("--vllm.num_engines") + 1] = "1"  # 1 x 2 != 4, bypassing our check
    proc, _ = run_openrlhf(argv, tmp_path)
    assert proc.returncode != 0
    assert "must be equal to vllm_num_engines * vllm_tensor_parallel_size" in proc.stderr
    # The builder refuses such a config first, naming the key.
    with pytest.raises(ConfigError, match=r"^config key 'training.openrlhf.vllm_num_engines'"):
        command(with_openrlhf(full_config["training"], vllm_tensor_parallel_size=2,
                              vllm_num_engines=1))
    with pytest.raises(ConfigError,
                       match=r"^config key 'training.openrlhf.vllm_tensor_parallel_size'"):
        command(with_openrlhf(full_config["training"], vllm_tensor_parallel_size=3))


def test_job_gpus_and_overrides_reach_the_command(full_config, tmp_path):
    t = {**full_config["training"], "group_size": 16, "kl_coef": 0.0,
         "openrlhf": {**full_config["training"]["openrlhf"], "colocate_all": False,
                      "vllm_num_engines": 1, "zero_stage": 2,
                      "extra_args": ["--vllm.enforce_eager"]}}
    a = parse_with_openrlhf(command(t, n_gpus=2), tmp_path)
    assert a["rollout"]["n_samples_per_prompt"] == 16
    assert a["actor"]["num_gpus_per_node"] == 2 and a["vllm"]["num_engines"] == 1
    assert a["train"]["colocate_all"] is False and a["vllm"]["enable_sleep"] is False
    assert a["ds"]["zero_stage"] == 2 and a["vllm"]["enforce_eager"] is True


def with_lora(t, **lora):
    return {**t, "lora": {**t["lora"], "enabled": True, **lora}}


def test_lora_flags_parse_and_adapters_go_to_the_merge(full_config, tmp_path):
    t = full_config["training"]
    a = parse_with_openrlhf(command(t), tmp_path)
    assert a["ds"]["lora"]["rank"] == 0  # off: OpenRLHF trains every weight
    assert a["ckpt"]["output_dir"].endswith("results/train/r/model")
    assert merge_command(t, model_path="m", ckpt_dir="ck", output_dir="o") is None

    lora = with_lora(t, rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"])
    a = parse_with_openrlhf(command(lora), tmp_path)
    assert a["ds"]["lora"] == {"rank": 8, "alpha": 16, "dropout": 0.05,
                               "target_modules": ["q_proj", "v_proj"]}
    # 0.11.2 saves only the adapters: they go beside the checkpoints, the merge writes the
    # rule's output.
    assert a["ckpt"]["output_dir"] == str(adapter_dir("ck").resolve())
    assert Path(a["ckpt"]["output_dir"]).parent == Path(a["ckpt"]["path"]).parent
    # The config's own LoRA settings, as the full-scale run would pass them.
    a = parse_with_openrlhf(command(with_lora(t)), tmp_path)
    c = t["lora"]
    assert a["ds"]["lora"] == {"rank": c["rank"], "alpha": c["alpha"], "dropout": c["dropout"],
                               "target_modules": c["target_modules"]}
    # "all-linear" stays OpenRLHF's default string (a list holding it would name a module).
    a = parse_with_openrlhf(command(with_lora(t, target_modules="all-linear")), tmp_path)
    assert a["ds"]["lora"]["target_modules"] == "all-linear"

    merge = merge_command(lora, model_path="Qwen/Qwen2.5-1.5B-Instruct", ckpt_dir="ck",
                          output_dir="results/train/r/model", python="/py")
    line = shell_command(command(lora), merge)
    train_part, merge_part = line.split(" && ")
    assert train_part == shell_command(command(lora))
    assert shlex.split(merge_part) == merge == [
        "env", f"PYTHONPATH={REWARD_FILE.parents[1]}", "/py", "-m", "confagg.lora",
        "Qwen/Qwen2.5-1.5B-Instruct", str(adapter_dir("ck").resolve()),
        str(Path("results/train/r/model").resolve())]


def test_a_wrong_flag_is_rejected_by_openrlhf(full_config, tmp_path):
    argv = command(full_config["training"], n_gpus=1)
    proc = subprocess.run([*harness(tmp_path / "x.json"), *argv[3:],
                           "--actor_learning_rate", "1e-6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --actor_learning_rate" in proc.stderr


def test_training_and_evaluation_lengths_agree(full_config):
    check_lengths(full_config)
    bad = {**full_config, "training": {**full_config["training"],
                                       "max_new_tokens": full_config["evaluation"]["agg_max_tokens"] * 2}}
    with pytest.raises(ConfigError, match=r"^config key 'training.max_new_tokens'.*agg_max_tokens"):
        check_lengths(bad)
    short = {**full_config, "training": {**full_config["training"], "max_prompt_tokens": 64}}
    with pytest.raises(ConfigError, match=r"^config key 'training.max_prompt_tokens'"):
        check_lengths(short)


def curated_rows():
    """Rows shaped like curation's train.jsonl: k and difficulty mark the stratum."""
    sizes = {(1, "hard"): 37, (1, "easy"): 18, (2, "hard"): 60, (2, "easy"): 30, (4, "hard"): 9,
             (4, "easy"): 5}
    return [{"prompt": f"p{k}{d}{i}", "answer": "1", "problem_id": f"q{i}", "k": k,
             "difficulty": d} for (k, d), n in sizes.items() for i in range(n)]


def test_prompt_cap_keeps_the_mix_and_follows_the_seed():
    rows = curated_rows()
    full = Counter((r["k"], r["difficulty"]) for r in rows)
    for cap in (1, 17, 50, 100, len(rows) - 1):
        kept = draw(rows, cap, seed=0, path="train.jsonl")
        assert len(kept) == cap
        got = Counter((r["k"], r["difficulty"]) for r in kept)
        for s, n in full.items():  # each stratum within one row of its proportional share
            assert abs(got[s] - cap * n / len(rows)) < 1, (cap, s, got[s])
        assert [r for r in rows if r in kept] == kept  # file order kept
    assert draw(rows, 50, 0, "t") == draw(rows, 50, 0, "t")
    assert draw(rows, 50, 0, "t") != draw(rows, 50, 1, "t")
    assert draw(rows, None, 0, "t") == rows and draw(rows, 10**6, 0, "t") == rows


def test_prompt_cap_names_a_bad_row():
    rows = curated_rows()
    rows[4] = {**rows[4], "difficulty": "medium"}
    with pytest.raises(DataError, match=r"train.jsonl, row 5, field 'difficulty'"):
        draw(rows, 10, 0, "train.jsonl")


def test_easy_share_sets_the_mix_per_k_and_keeps_the_scarcer_kind():
    rows = curated_rows()  # per k: 37/18, 60/30, 9/5 hard/easy
    half = draw(rows, None, seed=0, path="train.jsonl", easy_share=0.5)
    got = Counter((r["k"], r["difficulty"]) for r in half)
    assert got == {(1, "hard"): 18, (1, "easy"): 18, (2, "hard"): 30, (2, "easy"): 30,
                   (4, "hard"): 5, (4, "easy"): 5}
    assert [r for r in rows if r in half] == half  # file order kept
    assert draw(rows, None, 0, "t", 0.5) == half and draw(rows, None, 1, "t", 0.5) != half
    # more easy than the pool has per hard set: all easy sets, hard ones drawn to match
    quarter_hard = Counter((r["k"], r["difficulty"]) for r in draw(rows, None, 0, "t", 0.75))
    assert quarter_hard == {(1, "hard"): 6, (1, "easy"): 18, (2, "hard"): 10,
                            (2, "easy"): 30, (4, "hard"): 2, (4, "easy"): 5}
    assert {r["difficulty"] for r in draw(rows, None, 0, "t", 0.0)} == {"hard"}
    assert len(draw(rows, None, 0, "t", 0.0)) == 37 + 60 + 9
    # with a cap, the capped draw keeps the share
    capped = Counter(r["difficulty"] for r in draw(rows, 40, 0, "t", 0.5))
    assert capped == {"hard": 20, "easy": 20}
    # the scarcer kind stays whole where the share's product falls on a half
    assert share_sizes({(1, "hard"): 1, (1, "easy"): 10}, 0.6) == {(1, "hard"): 1,
                                                                   (1, "easy"): 2}
    assert share_sizes({(1, "hard"): 5, (1, "easy"): 100}, 0.6) == {(1, "hard"): 5,
                                                                    (1, "easy"): 8}


def test_easy_share_without_easy_sets_names_the_key():
    hard_only = [r for r in curated_rows() if r["difficulty"] == "hard"]
    with pytest.raises(DataError, match=r"train.jsonl.*training.easy_share=0.5 leaves no rows"
                       r".*\(k=1 hard: 37, k=2 hard: 60, k=4 hard: 9\)"):
        draw(hard_only, None, 0, "train.jsonl", easy_share=0.5)


def test_wandb_key_stays_in_the_environment(full_config, tmp_path):
    """The real shell line with the key set, OpenRLHF's own strategy printing the parsed
    namespace: the key is in no file, log or namespace; W&B is on through the placeholder."""
    argv = command(full_config["training"])
    line = shell_command(argv)
    out = tmp_path / "parsed.json"
    # Run the job's own line, with the harness as the interpreter.
    prefix = shlex.join(argv[:3])
    assert line.startswith(prefix)
    line = shlex.join(harness(out, real_strategy=True)) + line[len(prefix):]
    log = tmp_path / "openrlhf.log"
    env = {**os.environ, "WANDB_API_KEY": MARKER, "WANDB_MODE": "offline"}
    proc = subprocess.run(["bash", "-c", f"{line} > {shlex.quote(str(log))} 2>&1"], env=env,
                          timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    a = json.loads(out.read_text())
    assert a["__strategy__"] == "DeepspeedStrategy"  # OpenRLHF's strategy did the printing
    assert "logger=namespace(" in text and WANDB_KEY_PLACEHOLDER in text  # printed namespace
    assert a["logger"]["wandb"]["key"] == WANDB_KEY_PLACEHOLDER  # W&B switched on
    assert MARKER not in line and MARKER not in " ".join(argv)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert log in written and out in written
    for p in written:
        assert MARKER not in p.read_text(errors="replace"), p


def test_dry_run_shows_the_openrlhf_command(tmp_path):
    # The real CLI, called directly: run_snakemake would wait for the vLLM lock,
    # which a dry run does not need.
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--profile", str(REPO / "profiles" / "gpu4"), "-n", "-p",
           "results/train/confagg-grpo/model"]
    env = {**os.environ, "WANDB_API_KEY": MARKER}
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    python = load_config(REPO / "config.yaml")["training"]["openrlhf"]["python"]
    assert f"{python} -m openrlhf.cli.train_ppo_ray --actor.model_name_or_path " \
           "Qwen/Qwen2.5-1.5B-Instruct" in proc.stdout
    assert "--actor.num_gpus_per_node 4" in proc.stdout
    assert "results/train/confagg-grpo/prompts/train.jsonl" in proc.stdout
    assert "--ds.packing_samples" in proc.stdout
    assert MARKER not in proc.stdout
    assert "confagg.lora" not in proc.stdout

    # With LoRA the job trains into the adapter folder, then merges into its output; the
    # log takes both.
    lora = tmp_path / "lora.yaml"
    lora.write_text("training: {lora: {enabled: true}}\n")
    proc = subprocess.run([*cmd, "--configfile", str(REPO / "config.yaml"), str(lora)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    ckpt = tmp_path / "results/.progress/train/confagg-grpo"
    assert f"--ckpt.output_dir {ckpt / 'adapter'} " in proc.stdout
    assert "--ds.lora.rank 16 --ds.lora.alpha 32 --ds.lora.dropout 0.1" in proc.stdout
    assert (f"-m confagg.lora Qwen/Qwen2.5-1.5B-Instruct {ckpt / 'adapter'} "
            f"{tmp_path / 'results/train/confagg-grpo/model'}) > "
            "logs/train/confagg-grpo/openrlhf.log 2>&1") in proc.stdout
