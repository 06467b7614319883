"""The exact OpenRLHF 0.11.2 GRPO command (dotted flags only, as 0.10.2+ requires).

GRPO = `--algo.advantage.estimator group_norm` with a group of
`--rollout.n_samples_per_prompt` responses per prompt, a k3 KL penalty used as a
loss, and the math-verify reward from confagg/reward.py. Ray: `train_ppo_ray`
calls `ray.init()`, which starts a local Ray on this node, or joins the cluster
named by RAY_ADDRESS when it is set (multi-node SLURM: see docs/architecture.md).

Memory: sample packing with a per-GPU token budget and micro batches of 1 (OpenRLHF's
long-context examples); the actor's float32 logits then scale with the budget, not
with micro batch x `data.max_len`. Sampling: rollouts use top_p 1.0 and no top-k,
because the actor scores responses with the whole temperature-scaled softmax
(openrlhf/models/actor.py): a truncated sampler would make every rollout off-policy for
GRPO's ratio and KL (and 0.11.2 has no rollout top-k flag). Checkpoints: DeepSpeed's,
rotated at `max_ckpt_num`; no `_hf` copies (OpenRLHF never rotates those), the final
model goes to `--ckpt.output_dir`.

LoRA (`training.lora`): OpenRLHF's `--ds.lora.*` flags. With them 0.11.2 saves only the
adapters (and the tokenizer) to `--ckpt.output_dir`, so that points at `adapter_dir`
and `merge_command` merges them into the rule's output afterwards.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .config import ConfigError

REWARD_FILE = Path(__file__).with_name("reward.py").resolve()
# Turns W&B on (OpenRLHF starts its WandbLogger only when --logger.wandb.key is set).
# The logger skips wandb.login when the environment holds a key, so the real key stays
# in WANDB_API_KEY and this placeholder is all that argv, the printed namespace and the
# uploaded run config ever hold.
WANDB_KEY_PLACEHOLDER = "env:WANDB_API_KEY"
WANDB_PROJECT = "conf-aggllm"


def engines(cfg: dict[str, Any], n_gpus: int) -> tuple[int, int]:
    """(vLLM engines, tensor parallel size): engines x TP must equal the actor's GPUs
    when everything is colocated, as train_ppo_ray asserts; default as many engines as fit."""
    o = cfg["openrlhf"]
    gpus = int(o.get("num_nodes", 1)) * n_gpus
    tp = int(o["vllm_tensor_parallel_size"])
    n = o["vllm_num_engines"]
    if n is None:
        if gpus % tp:
            raise ConfigError(f"config key 'training.openrlhf.vllm_tensor_parallel_size': {tp} "
                              f"does not divide the job's {gpus} GPUs")
        n = gpus // tp
    if o["colocate_all"] and int(n) * tp != gpus:
        raise ConfigError(f"config key 'training.openrlhf.vllm_num_engines': {n} engines x "
                          f"tensor parallel {tp} must equal the {gpus} GPUs of the actor when "
                          "colocate_all is on (OpenRLHF asserts it)")
    return int(n), tp


def max_len(cfg: dict[str, Any]) -> int:
    """Prompt plus response, in tokens (OpenRLHF's --data.max_len)."""
    return int(cfg["max_prompt_tokens"]) + int(cfg["max_new_tokens"])


def tokens_per_gpu(cfg: dict[str, Any]) -> int:
    """The packed micro batch's token budget; one longest sequence must fit in it."""
    n = cfg["openrlhf"]["max_tokens_per_gpu"]
    n = max_len(cfg) if n is None else int(n)
    if n < max_len(cfg):
        raise ConfigError(f"config key 'training.openrlhf.max_tokens_per_gpu': {n} is below "
                          f"max_prompt_tokens + max_new_tokens = {max_len(cfg)}, the longest "
                          "sequence a packed micro batch must hold")
    return n


def check_lengths(config: dict[str, Any]) -> None:
    """The aggregator answers at evaluation as long as it learned to: the training and
    evaluation output lengths must agree, and curated prompts must fit the training prompt
    length (raises ConfigError naming the keys)."""
    t, e = config["training"], config["evaluation"]
    if t["max_new_tokens"] != e["agg_max_tokens"]:
        raise ConfigError(f"config key 'training.max_new_tokens': {t['max_new_tokens']} differs "
                          f"from evaluation.agg_max_tokens {e['agg_max_tokens']}; the trained "
                          "aggregator must be evaluated at the length it was trained for")
    budget = config["curation"].get("prompt_token_budget")
    if budget is not None and budget > t["max_prompt_tokens"]:
        raise ConfigError(f"config key 'training.max_prompt_tokens': {t['max_prompt_tokens']} "
                          f"is below curation.prompt_token_budget {budget}: curated prompts "
                          "would not fit")


def adapter_dir(ckpt_dir: str | Path) -> Path:
    """Where OpenRLHF saves the trained adapters: beside its checkpoints (progress, not
    the rule's output)."""
    return Path(ckpt_dir).with_name("adapter")


def lora_flags(lora: dict[str, Any]) -> list[str]:
    """OpenRLHF 0.11.2's LoRA flags. `--ds.lora.target_modules` takes names (nargs='*')
    and its default is the string "all-linear", which peft reads as every linear layer; a
    list holding "all-linear" would be a module name, so that value is left to the
    default."""
    flags = ["--ds.lora.rank", str(lora["rank"]), "--ds.lora.alpha", str(lora["alpha"]),
             "--ds.lora.dropout", str(lora["dropout"])]
    if lora["target_modules"] != "all-linear":
        flags += ["--ds.lora.target_modules", *lora["target_modules"]]
    return flags


def build_command(cfg: dict[str, Any], *, model_path: str, train_path: str, val_path: str,
                  output_dir: str, ckpt_dir: str, n_gpus: int, python: str = "python",
                  tensorboard_dir: str | None = None, run: str = "confagg-grpo") -> list[str]:
    """argv for `python -m openrlhf.cli.train_ppo_ray` from the `training` config section."""
    o = cfg["openrlhf"]
    n_gpus = max(1, int(n_gpus))
    nodes = int(o.get("num_nodes", 1))
    n_engines, tp = engines(cfg, n_gpus)
    caps = [c for c in (cfg["max_prompts"], cfg["max_val_prompts"]) if c is not None]
    lora = cfg["lora"]["enabled"]
    save_to = adapter_dir(ckpt_dir) if lora else Path(output_dir)
    argv = [
        python, "-m", "openrlhf.cli.train_ppo_ray",
        "--actor.model_name_or_path", model_path,
        "--actor.num_nodes", str(nodes), "--actor.num_gpus_per_node", str(n_gpus),
        "--ref.num_nodes", str(nodes), "--ref.num_gpus_per_node", str(n_gpus),
        "--vllm.num_engines", str(n_engines),
        "--vllm.tensor_parallel_size", str(tp),
        "--vllm.gpu_memory_utilization", str(o["vllm_gpu_memory_utilization"]),
        "--algo.advantage.estimator", "group_norm",
        "--rollout.n_samples_per_prompt", str(cfg["group_size"]),
        "--algo.kl.init_coef", str(cfg["kl_coef"]),
        "--algo.kl.use_loss",
        "--algo.kl.estimator", "k3",
        "--reward.remote_url", str(REWARD_FILE),
        "--data.prompt_dataset", str(Path(train_path).resolve()),
        "--eval.dataset", str(Path(val_path).resolve()),
        "--eval.steps", str(cfg["eval_steps"]),
        "--eval.temperature", str(cfg["temperature"]),
        "--eval.n_samples_per_prompt", str(cfg["eval_samples"]),
        "--data.input_key", "prompt",
        "--data.label_key", "answer",
        "--data.apply_chat_template",
        "--data.max_len", str(max_len(cfg)),
        "--rollout.max_new_tokens", str(cfg["max_new_tokens"]),
        "--rollout.temperature", str(cfg["temperature"]),
        "--rollout.top_p", "1.0",
        "--rollout.batch_size", str(cfg["rollout_batch_size"]),
        "--rollout.micro_batch_size", str(o["micro_rollout_batch_size"]),
        "--train.batch_size", str(cfg["train_batch_size"]),
        "--ds.packing_samples",
        "--train.dynamic_batch_enable",
        "--train.max_tokens_per_gpu", str(tokens_per_gpu(cfg)),
        "--train.micro_batch_size", "1",
        "--train.max_epochs", "1",
        "--train.num_episodes", str(cfg["epochs"]),
        "--train.seed", str(cfg["seed"]),
        "--actor.adam.lr", str(cfg["learning_rate"]),
        *(["--actor.lr_scheduler", cfg["lr_schedule"]] if cfg["lr_schedule"] else []),
        "--ds.zero_stage", str(o["zero_stage"]),
        "--ds.param_dtype", "bf16",
        "--actor.gradient_checkpointing_enable",
        "--ckpt.output_dir", str(save_to.resolve()),
        "--ckpt.path", str(Path(ckpt_dir).resolve()),
        "--ckpt.save_steps", str(cfg["save_steps"]),
        "--ckpt.max_num", str(o["max_ckpt_num"]),
        "--ckpt.load_enable",
        "--logger.logging_steps", "1",
        "--logger.wandb.project", WANDB_PROJECT,
        "--logger.wandb.run_name", run,
    ]
    if caps:
        # OpenRLHF applies one cap to both files; ours are already drawn to their caps.
        argv += ["--data.max_samples", str(max(caps))]
    if tensorboard_dir:
        argv += ["--logger.tensorboard_dir", str(Path(tensorboard_dir).resolve())]
    if o["colocate_all"]:
        argv += ["--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"]
    if lora:
        argv += lora_flags(cfg["lora"])
    argv += [str(a) for a in o["extra_args"]]
    return argv


def merge_command(cfg: dict[str, Any], *, model_path: str, ckpt_dir: str, output_dir: str,
                  python: str = "python") -> list[str] | None:
    """argv that merges OpenRLHF's saved adapters into `output_dir` (confagg.lora, run by
    the OpenRLHF environment's interpreter, which has peft; the package is put on its
    path, as the conda environment does not install it); None without LoRA."""
    if not cfg["lora"]["enabled"]:
        return None
    return ["env", f"PYTHONPATH={REWARD_FILE.parents[1]}", python, "-m", "confagg.lora",
            model_path, str(adapter_dir(ckpt_dir).resolve()), str(Path(output_dir).resolve())]


def shell_command(argv: list[str], merge: list[str] | None = None) -> str:
    """The command as a shell line: W&B is switched on when the environment holds
    WANDB_API_KEY (with WANDB_MODE=offline, wandb.init writes the run locally for a later
    `wandb sync`); argv then carries only the placeholder, never the key. `merge`, when
    given, runs after training succeeds."""
    line = shlex.join(argv) + f" ${{WANDB_API_KEY:+--logger.wandb.key {WANDB_KEY_PLACEHOLDER}}}"
    return f"{line} && {shlex.join(merge)}" if merge else line
