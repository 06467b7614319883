# Stage 3, train: GRPO on the curated aggregation prompts. The config's
# training.trainer picks OpenRLHF (Ray, multi-GPU) or TRL (one process).


if config["training"]["trainer"] == "openrlhf":

    rule train_openrlhf:
        input:
            unpack(train_inputs),
        output:
            model=directory("results/train/{run}/model"),
        params:
            cmd=openrlhf_command,
            ckpt_dir="results/.progress/train/{run}/ckpt",
        resources:
            gpu=4,
        log:
            "logs/train/{run}/openrlhf.log",
        benchmark:
            "benchmarks/train/{run}/openrlhf.tsv"
        conda:
            "../envs/train-openrlhf.yaml"
        shell:
            "mkdir -p {params.ckpt_dir} && {params.cmd} > {log} 2>&1"

else:

    rule train_trl:
        input:
            unpack(train_inputs),
        output:
            model=directory("results/train/{run}/model"),
            history="results/train/{run}/train_log.jsonl",
        params:
            training=trl_settings(),
            model_path=model_path(AGGREGATOR),
            ckpt_dir="results/.progress/train/{run}/ckpt",
        resources:
            gpu=1,
        log:
            "logs/train/{run}/trl.log",
        benchmark:
            "benchmarks/train/{run}/trl.tsv"
        conda:
            "../envs/train-trl.yaml"
        script:
            "../workflow/scripts/train_trl.py"


TARGETS.append(f"results/train/{RUN}/model")
