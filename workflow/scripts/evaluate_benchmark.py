"""Rule evaluate_benchmark: every method at every budget, with intervals and tokens; each
aggregator also paired with majority voting at the largest budget on the same problems."""

from confagg.aggregate import per_problem_accuracy, pools_from_samples
from confagg.estimators import aggregator_rows, evaluate_pools, reference_accuracy
from confagg.io import DataError, read_parquet, write_parquet
from confagg.report import metrics_table
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    p = smk.params
    pools = pools_from_samples(smk.input.samples, p.metric)
    per_problem = {}
    rows = evaluate_pools(pools, n_draws=p.n_draws, n_boot=p.bootstrap, seed=p.seed,
                          per_problem=per_problem)
    reference = reference_accuracy(per_problem)
    for method, path in zip(p.methods, smk.input.aggregations):
        acc, tokens = per_problem_accuracy(read_parquet(path), path)
        try:
            rows += aggregator_rows(acc, tokens, method, n_boot=p.bootstrap, seed=p.seed,
                                    reference=reference)
        except ValueError as exc:  # problems the samples do not have: the wrong file
            raise DataError(path, f"{exc}: not in {smk.input.samples}",
                            field="problem_id") from None
    write_parquet(smk.output[0], metrics_table(smk.wildcards.benchmark, rows))
    for r in rows:
        paired = (f"  {r['diff_ref']} {100 * r['diff']:+.1f} [{100 * r['diff_low']:+.1f}, "
                  f"{100 * r['diff_high']:+.1f}]" if r.get("diff_ref") else "")
        log.info("%-16s m=%-4d %.3f [%.3f, %.3f] %8.0f tokens%s", r["method"], r["budget"],
                 r["accuracy"], r["ci_low"], r["ci_high"], r["mean_tokens"], paired)
    log.info("%s: %d metric rows over %d problems", smk.wildcards.benchmark, len(rows),
             len(pools))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
