"""Rule evaluate_benchmark: every method at every budget, with intervals and tokens; each
aggregator also paired with majority voting at the largest budget on the same problems,
and with the other aggregators at the same m (confagg.methods.COMPARISONS) on the same
problems and candidate sets."""

from confagg.aggregate import per_problem_accuracy, pools_from_samples
from confagg.estimators import (
    aggregator_differences,
    aggregator_rows,
    evaluate_pools,
    reference_accuracy,
)
from confagg.io import DataError, read_parquet, write_parquet
from confagg.methods import COMPARISONS
from confagg.report import metrics_table, paired_table
from confagg.smk import setup_logging

SET_COLUMNS = ["budget", "problem_id", "set_idx", "candidate_ids"]


def candidate_sets(table) -> list[tuple]:
    """The (m, problem, set, candidates) an aggregation file answered, sorted."""
    d = table.select(SET_COLUMNS).to_pydict()
    return sorted(set(zip(d["budget"], d["problem_id"], d["set_idx"],
                          map(tuple, d["candidate_ids"]))))


def main(smk):
    log = setup_logging(smk)
    p = smk.params
    pools = pools_from_samples(smk.input.samples, p.metric)
    per_problem = {}
    rows = evaluate_pools(pools, n_draws=p.n_draws, n_boot=p.bootstrap, seed=p.seed,
                          per_problem=per_problem)
    reference = reference_accuracy(per_problem)
    by_method, first_sets = {}, None
    for method, path in zip(p.methods, smk.input.aggregations):
        table = read_parquet(path)
        acc, tokens = per_problem_accuracy(table, path)
        try:
            rows += aggregator_rows(acc, tokens, method, n_boot=p.bootstrap, seed=p.seed,
                                    reference=reference)
        except ValueError as exc:  # problems the samples do not have: the wrong file
            raise DataError(path, f"{exc}: not in {smk.input.samples}",
                            field="problem_id") from None
        # aggregators are paired on the same candidate sets (aggregate.agg_sets)
        sets = candidate_sets(table)
        if first_sets is None:
            first_sets = (path, sets)
        elif sets != first_sets[1]:
            raise DataError(path, f"its candidate sets differ from those of {first_sets[0]}: "
                            "aggregators must answer the same sets to be compared",
                            field="candidate_ids")
        by_method[method] = {m: {pid: sum(v) / len(v) for pid, v in by_pid.items()}
                             for m, by_pid in acc.items()}
    paired = aggregator_differences(by_method, COMPARISONS, n_boot=p.bootstrap, seed=p.seed)
    write_parquet(smk.output.metrics, metrics_table(smk.wildcards.benchmark, rows))
    write_parquet(smk.output.paired, paired_table(smk.wildcards.benchmark, paired))
    for r in rows:
        vs_ref = (f"  {r['diff_ref']} {100 * r['diff']:+.1f} [{100 * r['diff_low']:+.1f}, "
                  f"{100 * r['diff_high']:+.1f}]" if r.get("diff_ref") else "")
        log.info("%-16s m=%-4d %.3f [%.3f, %.3f] %8.0f tokens%s", r["method"], r["budget"],
                 r["accuracy"], r["ci_low"], r["ci_high"], r["mean_tokens"], vs_ref)
    for r in paired:
        log.info("%s - %s (%s) m=%d: %+.1f [%+.1f, %+.1f] points", r["method"], r["baseline"],
                 r["question"], r["budget"], 100 * r["diff"], 100 * r["diff_low"],
                 100 * r["diff_high"])
    log.info("%s: %d metric rows and %d paired differences over %d problems",
             smk.wildcards.benchmark, len(rows), len(paired), len(pools))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
