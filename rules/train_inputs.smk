# Input and parameter functions of the training rules (rules/train.smk).
import re

from confagg.methods import training_runs

AGGLM_RUN = config["training"]["agglm_run"]
# The confidence run, and the AggLM baseline's when an evaluated method reads its model.
TRAIN_RUNS = training_runs(config["evaluation"]["agg_methods"], run=RUN, agglm_run=AGGLM_RUN)
RUN_PATTERN = "|".join(re.escape(r) for r in (RUN, AGGLM_RUN))


def run_shows_confidence(wildcards):
    """The confidence run's prompts show it; the AggLM run's (training.agglm_run) do not."""
    return wildcards.run != AGGLM_RUN


def prompt_inputs(wildcards):
    """The run's seeded draw from the curated splits (TRL does not validate) and the
    aggregator's base model."""
    base = PROMPTS.format(run=wildcards.run)
    files = {"train": f"{base}/train.jsonl", "model": model_input(AGGREGATOR)}
    if TRAINER == "openrlhf":
        files["val"] = f"{base}/val.jsonl"
    return files


def prompt_cap(wildcards):
    """training.max_prompts for the train split, max_val_prompts for val."""
    key = "max_prompts" if wildcards.split == "train" else "max_val_prompts"
    return config["training"][key]


def openrlhf_python():
    """The OpenRLHF environment's interpreter (`training.openrlhf.python`); a relative
    path is the repository's (make setup builds .venv-openrlhf there), whatever the
    working directory."""
    python = config["training"]["openrlhf"]["python"]
    if os.sep in python and not os.path.isabs(python):
        return os.path.join(workflow.basedir, python)
    return python


def openrlhf_shell(wildcards, input, output, resources):
    """The OpenRLHF 0.11.2 command line for this job (shown by `snakemake -n -p`); with
    LoRA, then the merge of its adapters into the job's output."""
    from confagg.train_openrlhf import build_command, merge_command, shell_command

    argv = build_command(
        config["training"],
        model_path=model_path(AGGREGATOR),
        train_path=input.train,
        val_path=input.val,
        output_dir=output.model,
        ckpt_dir=CKPT_DIR.format(run=wildcards.run),
        n_gpus=resources.gpu,
        python=openrlhf_python(),
        tensorboard_dir=TENSORBOARD.format(run=wildcards.run),
        run=wildcards.run,
    )
    merge = merge_command(
        config["training"],
        model_path=model_path(AGGREGATOR),
        ckpt_dir=CKPT_DIR.format(run=wildcards.run),
        output_dir=output.model,
        python=openrlhf_python(),
    )
    return shell_command(argv, merge)


def openrlhf_reward_env(wildcards):
    """CONFAGG_REWARD='...': the reward's settings, which OpenRLHF's Ray workers on the
    job's node inherit (the reward file is loaded by path, with no arguments)."""
    from confagg.reward import RewardSettings

    return RewardSettings(
        require_boxed=config["training"]["reward"]["require_boxed"],
        timeout_s=config["grading"]["timeout_s"],
    ).shell_prefix()


def curves_inputs(wildcards):
    """Each trained run's TRL per-step log; OpenRLHF logs steps only to TensorBoard (read
    after training)."""
    if TRAINER == "trl":
        return {"history": [f"results/train/{r}/train_log.jsonl" for r in TRAIN_RUNS]}
    return {"model": [f"results/train/{r}/model" for r in TRAIN_RUNS]}
