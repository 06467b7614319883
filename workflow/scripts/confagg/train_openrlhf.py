"""The exact OpenRLHF 0.11.2 GRPO command (dotted flags only, as 0.10.2+ requires).

GRPO = `--algo.advantage.estimator group_norm` with a group of
`--rollout.n_samples_per_prompt` responses per prompt, a k3 KL penalty used as a
loss, and the math-verify reward from confagg/reward.py. Ray: `train_ppo_ray`
calls `ray.init()`, which starts a local Ray on this node, or joins the cluster
named by RAY_ADDRESS when it is set (multi-node SLURM: see docs/architecture.md).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

REWARD_FILE = Path(__file__).with_name("reward.py").resolve()


def build_command(cfg: dict[str, Any], *, model_path: str, train_path: str, val_path: str,
                  output_dir: str, ckpt_dir: str, n_gpus: int, python: str = "python"
                  ) -> list[str]:
    """argv for `python -m openrlhf.cli.train_ppo_ray` from the `training` config section."""
    o = cfg["openrlhf"]
    n_gpus = max(1, int(n_gpus))
    nodes = int(o.get("num_nodes", 1))
    argv = [
        python, "-m", "openrlhf.cli.train_ppo_ray",
        "--actor.model_name_or_path", model_path,
        "--actor.num_nodes", str(nodes), "--actor.num_gpus_per_node", str(n_gpus),
        "--ref.num_nodes", str(nodes), "--ref.num_gpus_per_node", str(n_gpus),
        "--vllm.num_engines", str(o["vllm_num_engines"] or nodes * n_gpus),
        "--vllm.tensor_parallel_size", str(o["vllm_tensor_parallel_size"]),
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
        "--data.input_key", "prompt",
        "--data.label_key", "answer",
        "--data.apply_chat_template",
        "--data.max_len", str(cfg["max_prompt_tokens"] + cfg["max_new_tokens"]),
        "--rollout.max_new_tokens", str(cfg["max_new_tokens"]),
        "--rollout.temperature", str(cfg["temperature"]),
        "--rollout.batch_size", str(cfg["rollout_batch_size"]),
        "--rollout.micro_batch_size", str(o["micro_rollout_batch_size"]),
        "--train.batch_size", str(cfg["train_batch_size"]),
        "--train.micro_batch_size", str(o["micro_train_batch_size"]),
        "--train.max_epochs", "1",
        "--train.num_episodes", str(cfg["epochs"]),
        "--train.seed", str(cfg["seed"]),
        "--actor.adam.lr", str(cfg["learning_rate"]),
        "--ds.zero_stage", str(o["zero_stage"]),
        "--ds.param_dtype", "bf16",
        "--actor.gradient_checkpointing_enable",
        "--ckpt.output_dir", str(Path(output_dir).resolve()),
        "--ckpt.path", str(Path(ckpt_dir).resolve()),
        "--ckpt.save_steps", str(cfg["save_steps"]),
        "--ckpt.save_hf",
        "--ckpt.load_enable",
        "--logger.logging_steps", "1",
    ]
    if o["colocate_all"]:
        argv += ["--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"]
    argv += [str(a) for a in o["extra_args"]]
    return argv


def shell_command(argv: list[str]) -> str:
    """The command as a shell line. The W&B key is added by the shell from the
    environment when set, so its value never appears in the command, log or config."""
    return shlex.join(argv) + ' ${WANDB_API_KEY:+--logger.wandb.key "$WANDB_API_KEY"}'
