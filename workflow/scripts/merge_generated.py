"""Rule merge_generated: join the shards; every problem must have samples 0..n-1."""

from confagg.generation import merge_shards
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    rows = merge_shards(list(smk.input.shards), smk.input.dataset, smk.params.n, smk.output[0])
    log.info("merged %d samples from %d shards", rows, len(smk.input.shards))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
