"""Rule evaluate_benchmark: every method at every budget, with intervals and tokens."""

from confagg.aggregate import per_problem_accuracy, pools_from_samples
from confagg.estimators import aggregator_rows, evaluate_pools
from confagg.io import read_parquet, write_parquet
from confagg.report import metrics_table
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    p = smk.params
    pools = pools_from_samples(smk.input.samples, p.metric)
    rows = evaluate_pools(pools, n_draws=p.n_draws, n_boot=p.bootstrap, seed=p.seed)
    for method, path in zip(p.methods, smk.input.aggregations):
        acc, tokens = per_problem_accuracy(read_parquet(path), path)
        rows += aggregator_rows(acc, tokens, method, n_boot=p.bootstrap, seed=p.seed)
    write_parquet(smk.output[0], metrics_table(smk.wildcards.benchmark, rows))
    for r in rows:
        log.info("%-16s m=%-4d %.3f [%.3f, %.3f] %8.0f tokens", r["method"], r["budget"],
                 r["accuracy"], r["ci_low"], r["ci_high"], r["mean_tokens"])
    log.info("%s: %d metric rows over %d problems", smk.wildcards.benchmark, len(rows),
             len(pools))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
