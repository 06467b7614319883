# Stage 3, train: GRPO on the curated aggregation prompts. The config's
# training.trainer picks OpenRLHF (Ray, multi-GPU) or TRL (one process).
TRAINER = config["training"]["trainer"]
PROMPTS = "results/train/{run}/prompts"
TENSORBOARD = "logs/train/{run}/tensorboard"
# checkpoints: progress, not output (Snakemake would delete a failed job's)
CKPT_DIR = "results/.progress/train/{run}/ckpt"


include: "train_inputs.smk"

if TRAINER == "openrlhf":
    from confagg.train_openrlhf import check_lengths

    check_lengths(config)


rule training_prompts:
    input:
        f"results/curate/{SOLVER}/{TRAIN_DATASET}/{{split}}.jsonl",
    output:
        rows=f"{PROMPTS}/{{split}}.jsonl",
        mix=f"{PROMPTS}/{{split}}_mix.json",
    wildcard_constraints:
        split="train|val",
        run=RUN_PATTERN,
    params:
        cap=prompt_cap,
        seed=config["training"]["seed"],
        # validation keeps the curated mix
        easy_share=lambda wc: config["training"]["easy_share"] if wc.split == "train" else None,
        # the AggLM run's prompts leave the confidence out
        show_confidence=run_shows_confidence,
    log:
        "logs/train/{run}/prompts_{split}.log",
    benchmark:
        "logs/timings/train/{run}/prompts_{split}.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/training_prompts.py"


if TRAINER == "openrlhf":

    rule train_openrlhf:
        input:
            unpack(prompt_inputs),
        output:
            model=directory("results/train/{run}/model"),
        params:
            cmd=openrlhf_shell,
            reward_env=openrlhf_reward_env,
            ckpt_dir=CKPT_DIR,
            tensorboard=TENSORBOARD,
        resources:
            gpu=4,
            mem_mb=256000,
            runtime=2880,
        log:
            "logs/train/{run}/openrlhf.log",
        benchmark:
            "logs/timings/train/{run}/openrlhf.tsv"
        conda:
            "../envs/train-openrlhf.yaml"
        shell:
            "export {params.reward_env} && "
            "mkdir -p {params.ckpt_dir} {params.tensorboard} && ({params.cmd}) > {log} 2>&1"

else:

    rule train_trl:
        input:
            unpack(prompt_inputs),
        output:
            model=directory("results/train/{run}/model"),
            history="results/train/{run}/train_log.jsonl",
        params:
            training=dict(
                trl_settings(),
                reward={
                    **config["training"]["reward"],
                    "timeout_s": config["grading"]["timeout_s"],
                },
            ),
            model_path=model_path(AGGREGATOR),
            ckpt_dir=CKPT_DIR,
            tensorboard=TENSORBOARD,
        # a failed run resumes from its last checkpoint
        retries: 1
        threads: TRAINER_THREADS
        resources:
            gpu=1,
            mem_mb=64000,
            runtime=1440,
        log:
            "logs/train/{run}/trl.log",
        benchmark:
            "logs/timings/train/{run}/trl.tsv"
        conda:
            "../envs/train-trl.yaml"
        script:
            "../workflow/scripts/train_trl.py"


rule training_curves:
    input:
        unpack(curves_inputs),
    output:
        png=report(
            "results/report/training_curves.png",
            category="Training",
            labels={"figure": "training curves"},
            caption="../workflow/report/training_curves.rst",
        ),
    params:
        runs=TRAIN_RUNS,
        tensorboards=[TENSORBOARD.format(run=r) for r in TRAIN_RUNS],
    log:
        "logs/train/training_curves.log",
    benchmark:
        "logs/timings/train/training_curves.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/training_curves.py"


TARGETS.extend([f"results/train/{RUN}/model", "results/report/training_curves.png"])
