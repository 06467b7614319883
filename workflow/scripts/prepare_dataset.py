"""Rule prepare_dataset: normalize one configured dataset to resources/datasets/{dataset}.jsonl."""

from confagg.datasets import load_dataset_rows
from confagg.io import write_jsonl
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    name = smk.wildcards.dataset
    rows, report = load_dataset_rows(name, dict(smk.params.spec))
    write_jsonl(smk.output[0], rows)
    log.info("dataset %s from %s: %s", name, smk.params.spec["source"], report.summary())


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
