"""Rule aggregate: the aggregator answers sets of m candidates from the solver's pool."""

from confagg.gpu import acquire_gpus
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    acquire_gpus(int(smk.resources.get("gpu", 0)))
    from confagg.aggregate import run_aggregation

    p = smk.params
    rows = run_aggregation(
        samples_path=smk.input.samples, dataset_path=smk.input.dataset,
        calibration_path=smk.input.calibration, model_path=p.model_path,
        vllm_cfg=dict(p.vllm), evaluation=dict(p.evaluation),
        show_confidence=bool(p.show_confidence), token_budget=p.token_budget,
        grading=dict(p.grading), out_path=smk.output[0], progress_dir=p.progress_dir,
        confidence_scale=p.confidence_scale, prompt_style=p.prompt_style)
    log.info("wrote %d aggregations to %s", rows, smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
