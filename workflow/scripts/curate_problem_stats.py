"""Rule problem_stats: one row per problem (pass rate, majority and weighted votes)."""

from confagg.curation import load_samples, problem_stats
from confagg.io import write_parquet
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    table = problem_stats(load_samples(smk.input[0], smk.params.metric, with_text=False))
    write_parquet(smk.output[0], table)
    log.info("%d problems; majority right on %d", table.num_rows,
             sum(table.column("majority_correct").to_pylist()))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
