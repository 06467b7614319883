# Stage 2, curate: per-problem statistics, the confidence scale, decontamination
# against the benchmarks, and the aggregator's hard/easy training sets with their
# prompts.


rule decontaminate:
    input:
        train="resources/datasets/{dataset}.jsonl",
        benchmarks=[dataset_file(b) for b in DECONTAMINATE_AGAINST],
    output:
        dropped="results/curate/decontamination/{dataset}.json",
        report_md=report(
            "results/curate/decontamination/{dataset}.md",
            category="Curation",
            caption="../workflow/report/decontamination.rst",
        ),
    params:
        benchmarks=DECONTAMINATE_AGAINST,
        ngram=config["curation"]["decontamination_ngram"],
    log:
        "logs/curate/decontaminate/{dataset}.log",
    benchmark:
        "logs/timings/curate/decontaminate/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/curate_decontaminate.py"


rule benchmark_overlap:
    input:
        train=dataset_file(TRAIN_DATASET),
        decontamination=f"results/curate/decontamination/{TRAIN_DATASET}.json",
        benchmark="resources/datasets/{benchmark}.jsonl",
    output:
        "results/evaluate/overlap/{benchmark}.json",
    params:
        ngram=config["curation"]["decontamination_ngram"],
    log:
        "logs/curate/benchmark_overlap/{benchmark}.log",
    benchmark:
        "logs/timings/curate/benchmark_overlap/{benchmark}.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/curate_benchmark_overlap.py"


rule problem_stats:
    input:
        "results/generate/{model}/{dataset}/samples.parquet",
    output:
        "results/curate/{model}/{dataset}/problems.parquet",
    params:
        metric=config["curation"]["confidence_metric"],
    log:
        "logs/curate/{model}/{dataset}/problem_stats.log",
    benchmark:
        "logs/timings/curate/{model}/{dataset}/problem_stats.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/curate_problem_stats.py"


rule calibrate_confidence:
    input:
        "results/generate/{model}/{dataset}/samples.parquet",
    output:
        "results/curate/{model}/{dataset}/calibration.json",
    params:
        metric=config["curation"]["confidence_metric"],
    log:
        "logs/curate/{model}/{dataset}/calibrate_confidence.log",
    benchmark:
        "logs/timings/curate/{model}/{dataset}/calibrate_confidence.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/curate_calibrate_confidence.py"


rule aggregation_sets:
    input:
        samples="results/generate/{model}/{dataset}/samples.parquet",
        dataset="resources/datasets/{dataset}.jsonl",
        calibration="results/curate/{model}/{dataset}/calibration.json",
        decontamination="results/curate/decontamination/{dataset}.json",
        tokenizer=model_input(AGGREGATOR),
    output:
        train=ensure("results/curate/{model}/{dataset}/train.jsonl", non_empty=True),
        val="results/curate/{model}/{dataset}/val.jsonl",
        sets="results/curate/{model}/{dataset}/sets.parquet",
        report="results/curate/{model}/{dataset}/curate_report.json",
        report_md=report(
            "results/curate/{model}/{dataset}/curate_report.md",
            category="Curation",
            caption="../workflow/report/curate.rst",
        ),
    params:
        # decontamination settings reach the sets through the decontamination file
        curation={
            k: v
            for k, v in config["curation"].items()
            if k not in ("decontaminate_against", "decontamination_ngram")
        },
        # the report's share of traces shorter than one confidence window
        window=config["generation"]["confidence_window"],
        # a function: the folder is also the input (a bundled model), which the linter
        # flags in a plain string param
        tokenizer=lambda wc: model_path(AGGREGATOR),
    log:
        "logs/curate/{model}/{dataset}/aggregation_sets.log",
    benchmark:
        "logs/timings/curate/{model}/{dataset}/aggregation_sets.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/curate_aggregation_sets.py"


TARGETS.append(f"results/curate/decontamination/{TRAIN_DATASET}.md")
TARGETS.extend(
    f"results/curate/{SOLVER}/{TRAIN_DATASET}/{name}"
    for name in (
        "problems.parquet",
        "calibration.json",
        "sets.parquet",
        "train.jsonl",
        "val.jsonl",
        "curate_report.json",
        "curate_report.md",
    )
)
