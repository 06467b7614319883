# Data and model preparation: every dataset normalized to one JSONL shape, and the
# bundled model turned into a Hugging Face folder.


rule prepare_dataset:
    input:
        dataset_source_input,
    output:
        ensure("resources/datasets/{dataset}.jsonl", non_empty=True),
    params:
        spec=lambda wc: normalization_spec(wc.dataset),
    log:
        "logs/data/prepare_dataset/{dataset}.log",
    benchmark:
        "logs/timings/data/prepare_dataset/{dataset}.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/prepare_dataset.py"


rule prepare_bundled_model:
    output:
        directory("resources/models/{bundled}"),
    wildcard_constraints:
        bundled="|".join(BUNDLED_MODELS),
    log:
        "logs/data/prepare_bundled_model/{bundled}.log",
    benchmark:
        "logs/timings/data/prepare_bundled_model/{bundled}.tsv"
    conda:
        "../envs/cpu.yaml"
    script:
        "../workflow/scripts/prepare_bundled_model.py"


TARGETS.extend(dataset_file(d) for d in [TRAIN_DATASET, *BENCHMARKS])
TARGETS.extend(
    f"resources/models/{bundled_name(config['models'][m]['path'])}"
    for m in sorted({SOLVER, AGGREGATOR})
    if bundled_name(config["models"][m]["path"])
)
