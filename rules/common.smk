# Shared by every stage: config validation, wildcard constraints, input functions.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The library lives beside the entry scripts; make it importable here too (it is
# also installed into .venv, but conda job environments only see this path).
sys.path.insert(0, os.path.join(workflow.basedir, "workflow", "scripts"))

from confagg.config import check_config_files, validate_config  # noqa: E402
from confagg.models import BUNDLED_MODELS, bundled_name  # noqa: E402
from confagg.smk import mark_snakemake_process  # noqa: E402

# Jobs inherit this process's identity and die with it (confagg.smk).
mark_snakemake_process()


# Fails before any job runs, with a message that names the offending key; fills
# in the schema's defaults.
check_config_files(workflow.configfiles)  # a key given twice: Snakemake keeps the last
validate_config(config)

SOLVER = config["solver"]
AGGREGATOR = config["aggregator"]
TRAIN_DATASET = config["train_dataset"]
BENCHMARKS = list(config["benchmarks"])
# Training problems are cleaned against these; every benchmark's overlap with them is
# still checked (rule benchmark_overlap) and shown in the report.
DECONTAMINATE_AGAINST = list(config["curation"]["decontaminate_against"] or BENCHMARKS)

# CPU threads of the TRL trainer's job: Snakemake exports OMP_NUM_THREADS (torch's thread
# count) = the job's threads, 1 by default. Locally it is capped at --cores: on 2 cores
# a GRPO step takes 0.75x the time with both. On SLURM the profile's cpus_per_task
# match it (a site that lowers those sets set-threads alike). vLLM's jobs (generate,
# aggregate) keep 1: on 2 cores a CPU worker with 2 threads starves the engine's own
# processes (a study shard ran 4x slower). train_openrlhf keeps 1: Ray's actors inherit it.
TRAINER_THREADS = 8

# Final targets; each stage's .smk appends its own. `rule all` consumes them.
TARGETS = []


wildcard_constraints:
    model=r"[^/]+",
    dataset=r"[^/]+",
    shard=r"\d+",
    benchmark=r"[^/]+",


def model_path(name):
    """Where a job loads model `name` from: the prepared folder for a bundled model,
    else the configured Hub id or local path, untouched."""
    path = config["models"][name]["path"]
    bundled = bundled_name(path)
    return f"resources/models/{bundled}" if bundled else path


def model_input(name):
    """Input files a job needs for model `name`: the prepared bundled folder (so the
    preparation rule runs first), a local folder's config, or nothing for a Hub id."""
    path = config["models"][name]["path"]
    bundled = bundled_name(path)
    if bundled:
        return [f"resources/models/{bundled}"]
    if os.path.isdir(path):
        return [os.path.join(path, "config.json")]
    return []


def model_spec(name):
    """The model's chat settings, for params (a change reruns what uses them)."""
    m = config["models"][name]
    return {
        "system_prompt": m["system_prompt"],
        "prompt_template": m["prompt_template"],
        "chat_template_kwargs": m["chat_template_kwargs"],
    }


def samples_per_problem(dataset):
    """Samples per problem: the dataset's n_samples, else generation.n."""
    return config["datasets"][dataset]["n_samples"] or config["generation"]["n"]


def dataset_file(dataset):
    return f"resources/datasets/{dataset}.jsonl"


def dataset_source_input(wildcards):
    """A local source file is an input, so editing it reruns the normalization."""
    source = config["datasets"][wildcards.dataset]["source"]
    return [source[len("file:") :]] if source.startswith("file:") else []


def normalization_spec(dataset):
    """Only the keys that change the normalized rows (n_samples does not)."""
    keys = ("source", "split", "subset", "fields", "on_bad_rows", "float_answers", "limit",
            "builtin")
    return {k: config["datasets"][dataset][k] for k in keys}


def sampling_settings(wildcards=None):
    """The sampling parameters a generation job uses (its params: changing one reruns it)."""
    g = config["generation"]
    keys = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs", "seed")
    return {k: g[k] for k in keys}


RUN = config["training"]["run"]

# The training keys confagg.train_trl reads: only these reach the TRL job's params, so
# any other key (OpenRLHF's, `run` in the output path, `trainer` picking the rule, the
# prompt caps, which reach TRL through the drawn prompts file) leaves it alone.
TRL_KEYS = (
    "group_size",
    "kl_coef",
    "learning_rate",
    "temperature",
    "max_new_tokens",
    "seed",
    "reward",
    "trl",
    "lora",
)


def trl_settings(wildcards=None):
    """The training settings a TRL job reads (its params): a change to any other key does
    not retrain with TRL, nor rerun the evaluation after it. LoRA's settings count only
    when it is on, the learning-rate schedule when one is set."""
    t = config["training"]
    settings = {k: t[k] for k in TRL_KEYS}
    if not t["lora"]["enabled"]:
        settings["lora"] = {"enabled": False}
    if t["lr_schedule"] is not None:
        settings["lr_schedule"] = t["lr_schedule"]  # absent when null: TRL's own schedule
    return settings
