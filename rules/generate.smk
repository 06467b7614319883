# Stage 1, generate: n samples per problem from the solver, one vLLM engine per
# shard job, merged, then graded with math-verify.

from confagg.grading import GRADING_RULES  # noqa: E402


rule generate:
    input:
        dataset="resources/datasets/{dataset}.jsonl",
        model=lambda wc: model_input(wc.model),
    output:
        "results/generate/{model}/{dataset}/shards/{shard}.parquet",
    params:
        model_path=lambda wc: model_path(wc.model),
        model_spec=lambda wc: model_spec(wc.model),
        n=lambda wc: samples_per_problem(wc.dataset),
        n_shards=config["generation"]["shards"],
        sampling=sampling_settings,
        vllm=config["vllm"],
        conf_window=config["generation"]["confidence_window"],
        batch_problems=config["generation"]["batch_problems"],
        online=config["generation"]["online"],
        progress_dir="results/.progress/generate/{model}/{dataset}/shard{shard}",
    # a failed shard resumes from its saved batches
    retries: 1
    resources:
        gpu=1,
        mem_mb=64000,
        runtime=720,
    log:
        "logs/generate/{model}/{dataset}/shard{shard}.log",
    benchmark:
        "logs/timings/generate/{model}/{dataset}/shard{shard}.tsv"
    conda:
        "../envs/generate.yaml"
    script:
        "../workflow/scripts/generate_shard.py"


rule merge_generated:
    input:
        dataset="resources/datasets/{dataset}.jsonl",
        shards=lambda wc: expand(
            "results/generate/{model}/{dataset}/shards/{shard}.parquet",
            model=wc.model,
            dataset=wc.dataset,
            shard=range(config["generation"]["shards"]),
        ),
    output:
        temp("results/generate/{model}/{dataset}/merged.parquet"),
    params:
        n=lambda wc: samples_per_problem(wc.dataset),
    log:
        "logs/generate/{model}/{dataset}/merge.log",
    benchmark:
        "logs/timings/generate/{model}/{dataset}/merge.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/merge_generated.py"


rule grade_samples:
    input:
        merged="results/generate/{model}/{dataset}/merged.parquet",
        dataset="resources/datasets/{dataset}.jsonl",
    output:
        samples="results/generate/{model}/{dataset}/samples.parquet",
        summary="results/generate/{model}/{dataset}/grade_summary.json",
    params:
        workers=config["grading"]["workers"],
        timeout_s=config["grading"]["timeout_s"],
        rules=GRADING_RULES,
    threads: config["grading"]["workers"]
    resources:
        mem_mb=16000,
        runtime=120,
    log:
        "logs/generate/{model}/{dataset}/grade.log",
    benchmark:
        "logs/timings/generate/{model}/{dataset}/grade.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/grade_samples.py"


TARGETS.extend(
    f"results/generate/{SOLVER}/{d}/samples.parquet" for d in [TRAIN_DATASET, *BENCHMARKS]
)
