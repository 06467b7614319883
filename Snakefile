# Conf-AggLLM: train and evaluate a confidence-aware aggregator for math reasoning.
#
#   snakemake --profile profiles/local        the embedded default on a CPU (make run)
#   snakemake --profile profiles/gpu4         one 4-GPU node, full-scale config.yaml
#   snakemake --profile profiles/slurm        a SLURM cluster
#
# Stages: generate -> curate -> train -> evaluate (docs/architecture.md).

configfile: os.path.join(workflow.basedir, "config.yaml")


from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# With --sdm apptainer every job runs in this image (README "Containers"); other runs
# ignore it. CONFAGG_IMAGE: a .sif path or an apptainer URI such as docker://...
CONTAINER_IMAGE = os.environ.get("CONFAGG_IMAGE", "containers/confagg-gpu.sif")
if (
    workflow.deployment_settings is not None
    and DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
    and "://" not in CONTAINER_IMAGE
    and not os.path.exists(CONTAINER_IMAGE)
):
    raise WorkflowError(
        f"--sdm apptainer: image {CONTAINER_IMAGE} not found; build it (README "
        "'Containers') or set CONFAGG_IMAGE to a .sif file or an apptainer URI"
    )


container: CONTAINER_IMAGE


# `snakemake --report report.html`: this page, then the outputs marked with report().
report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/generate.smk"
include: "rules/curate.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"


# Light jobs run in Snakemake's own process: no cluster queue for a merge, a table or a
# download (SLURM gets the vLLM, grading, training and metrics jobs).
localrules:
    all,
    prepare_dataset,
    merge_generated,
    decontaminate,
    benchmark_overlap,
    problem_stats,
    calibrate_confidence,
    aggregation_sets,
    training_prompts,
    training_curves,
    report,


rule all:
    default_target: True
    input:
        TARGETS,
