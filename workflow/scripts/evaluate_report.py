"""Rule report: summary.csv, summary.md (with the headline, the paired differences
between aggregators and each benchmark's overlap with the training problems),
paired_differences.csv and the two plots."""

import json

from confagg.estimators import MODEL_FREE
from confagg.io import read_parquet
from confagg.report import headline, plot, write_summary
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    rows = [r for path in smk.input.metrics for r in read_parquet(path).to_pylist()]
    paired = [r for path in smk.input.paired for r in read_parquet(path).to_pylist()]
    overlaps = [json.loads(open(path).read()) for path in smk.input.overlap]
    write_summary(rows, smk.output.csv, smk.output.md, overlaps, paired=paired,
                  paired_csv_path=smk.output.paired_csv)
    plot(rows, smk.output.samples_png, x="budget")
    plot(rows, smk.output.tokens_png, x="mean_tokens")
    for bench in sorted({r["benchmark"] for r in rows}):
        br = [r for r in rows if r["benchmark"] == bench]
        for method in sorted({r["method"] for r in br} - set(MODEL_FREE)):
            log.info("%s: %s", bench, headline(br, method=method))
    log.info("report of %d rows and %d paired differences from %d benchmark(s) written",
             len(rows), len(paired), len(smk.input.metrics))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
