"""Rule decontaminate: training problems that overlap a benchmark problem, to drop."""

import json

from confagg.curation import load_problems
from confagg.decontam import decontaminate, report_markdown
from confagg.io import atomic_write_text
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    train = load_problems(smk.input.train).values()
    benchmarks = {name: load_problems(path).values()
                  for name, path in zip(smk.params.benchmarks, smk.input.benchmarks)}
    rep = decontaminate(train, benchmarks, n=smk.params.ngram)
    atomic_write_text(smk.output.dropped, json.dumps(rep, indent=1) + "\n")
    atomic_write_text(smk.output.report_md, report_markdown(rep, smk.wildcards.dataset))
    log.info("%d of %d training problems overlap a benchmark and are dropped: %s",
             len(rep["dropped"]), rep["train_problems"],
             [(d["id"], d["benchmark"], d["benchmark_id"]) for d in rep["dropped"][:20]])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
