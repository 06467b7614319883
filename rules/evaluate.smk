# Stage 4, evaluate: the aggregators at m candidates against pass@1, majority,
# confidence-weighted and filtered voting at every budget, per benchmark; then the
# summary table, the headline and the plots (marked for `snakemake --report`).
# The benchmark pools come from Stage 1's rules (results/generate/{solver}/{benchmark}).

from confagg.methods import agg_method, wildcard_pattern  # noqa: E402

AGG_METHODS = list(config["evaluation"]["agg_methods"])
# The keys an aggregation job reads: changing n_draws or bootstrap reruns only the
# cheap metrics, not the vLLM jobs.
AGG_KEYS = (
    "agg_budgets",
    "agg_sets",
    "agg_samples",
    "agg_temperature",
    "agg_top_p",
    "agg_top_k",
    "agg_max_tokens",
    "agg_batch_sets",
    "seed",
)


include: "evaluate_inputs.smk"


rule aggregate:
    input:
        # each method's model and confidence come from confagg/methods.py
        unpack(
            lambda wc: {
                "samples": f"results/generate/{SOLVER}/{wc.benchmark}/samples.parquet",
                "dataset": dataset_file(wc.benchmark),
                "calibration": f"results/curate/{SOLVER}/{TRAIN_DATASET}/calibration.json",
                "model": agg_model_input(wc),
            }
        ),
    output:
        "results/evaluate/{run}/{benchmark}/aggregations/{method}.parquet",
    wildcard_constraints:
        method=wildcard_pattern(),
    params:
        model_path=agg_model_path,
        vllm=config["vllm"],
        evaluation={k: config["evaluation"][k] for k in AGG_KEYS},
        show_confidence=lambda wc: agg_method(wc.method).show_confidence,
        token_budget=config["curation"]["prompt_token_budget"],
        # the scale the aggregator was trained on (percentile or raw)
        confidence_scale=config["curation"]["confidence_scale"],
        prompt_style=config["curation"]["prompt_style"],
        # answers extracted as the reward does (training.reward.require_boxed)
        grading={
            **config["grading"],
            "require_boxed": config["training"]["reward"]["require_boxed"],
        },
        progress_dir="results/.progress/evaluate/{run}/{benchmark}/{method}",
    # a failed job resumes from its saved batches
    retries: 1
    resources:
        gpu=1,
        mem_mb=64000,
        runtime=240,
    log:
        "logs/evaluate/{run}/{benchmark}/aggregate_{method}.log",
    benchmark:
        "logs/timings/evaluate/{run}/{benchmark}/aggregate_{method}.tsv"
    conda:
        "../envs/generate.yaml"
    script:
        "../workflow/scripts/evaluate_aggregate.py"


rule evaluate_benchmark:
    input:
        samples=f"results/generate/{SOLVER}/{{benchmark}}/samples.parquet",
        aggregations=expand(
            "results/evaluate/{{run}}/{{benchmark}}/aggregations/{method}.parquet",
            method=AGG_METHODS,
        ),
    output:
        metrics="results/evaluate/{run}/{benchmark}/metrics.parquet",
        # aggregator against aggregator at the same m (confagg.methods.COMPARISONS)
        paired="results/evaluate/{run}/{benchmark}/paired.parquet",
    params:
        metric=config["curation"]["confidence_metric"],
        methods=AGG_METHODS,
        n_draws=config["evaluation"]["n_draws"],
        bootstrap=config["evaluation"]["bootstrap"],
        seed=config["evaluation"]["seed"],
    resources:
        mem_mb=16000,
        runtime=120,
    log:
        "logs/evaluate/{run}/{benchmark}/metrics.log",
    benchmark:
        "logs/timings/evaluate/{run}/{benchmark}/metrics.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/evaluate_benchmark.py"


rule report:
    input:
        metrics=expand(
            "results/evaluate/{run}/{benchmark}/metrics.parquet", run=RUN, benchmark=BENCHMARKS
        ),
        paired=expand(
            "results/evaluate/{run}/{benchmark}/paired.parquet", run=RUN, benchmark=BENCHMARKS
        ),
        overlap=expand("results/evaluate/overlap/{benchmark}.json", benchmark=BENCHMARKS),
    output:
        csv=report(
            "results/report/summary.csv",
            category="Evaluation",
            labels={"figure": "summary table"},
            caption="../workflow/report/summary.rst",
        ),
        md=report(
            "results/report/summary.md",
            category="Evaluation",
            labels={"figure": "summary with headline"},
            caption="../workflow/report/summary_md.rst",
        ),
        paired_csv=report(
            "results/report/paired_differences.csv",
            category="Evaluation",
            labels={"figure": "paired differences between aggregators"},
            caption="../workflow/report/paired_differences.rst",
        ),
        samples_png=report(
            "results/report/accuracy_vs_samples.png",
            category="Evaluation",
            labels={"figure": "accuracy vs samples"},
            caption="../workflow/report/accuracy_vs_samples.rst",
        ),
        tokens_png=report(
            "results/report/accuracy_vs_tokens.png",
            category="Evaluation",
            labels={"figure": "accuracy vs tokens"},
            caption="../workflow/report/accuracy_vs_tokens.rst",
        ),
    log:
        "logs/evaluate/report.log",
    benchmark:
        "logs/timings/evaluate/report.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/evaluate_report.py"


TARGETS.extend(
    [
        "results/report/summary.csv",
        "results/report/summary.md",
        "results/report/paired_differences.csv",
        "results/report/accuracy_vs_samples.png",
        "results/report/accuracy_vs_tokens.png",
    ]
)
