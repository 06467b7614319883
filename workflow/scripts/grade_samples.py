"""Rule grade_samples: extract, grade and cluster every sample's answer."""

import json

from confagg.generation import grade_samples
from confagg.io import atomic_write_text
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    summary = grade_samples(merged_path=smk.input.merged, dataset_path=smk.input.dataset,
                            out_path=smk.output.samples, workers=smk.params.workers,
                            timeout_s=smk.params.timeout_s)
    atomic_write_text(smk.output.summary, json.dumps(summary, indent=2) + "\n")
    log.info("graded: %s", summary)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
