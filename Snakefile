# Conf-AggLLM: train and evaluate a confidence-aware aggregator for math reasoning.
#
#   snakemake --profile profiles/local        the embedded default on a CPU (make run)
#   snakemake --profile profiles/gpu4         one 4-GPU node, full-scale config.yaml
#   snakemake --profile profiles/slurm        a SLURM cluster
#
# Stages: generate -> curate -> train -> evaluate (docs/architecture.md).

configfile: os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/generate.smk"
include: "rules/curate.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        TARGETS,
