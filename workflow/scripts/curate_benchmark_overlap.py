"""Rule benchmark_overlap: a benchmark's problems that the kept training problems overlap.

Training is cleaned against `curation.decontaminate_against` (default: every benchmark).
A benchmark added later is checked here against the problems training kept, so a
contaminated score is reported instead of silently trusted.
"""

import json

from confagg.curation import drop_contaminated, load_problems
from confagg.decontam import decontaminate
from confagg.io import atomic_write_text
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    problems = load_problems(smk.input.train)
    drop_contaminated(problems, smk.input.decontamination)  # the problems training kept
    kept = list(problems.values())
    rep = decontaminate(kept, {smk.wildcards.benchmark: load_problems(smk.input.benchmark).values()},
                        n=smk.params.ngram)
    overlap = sorted({d["benchmark_id"] for d in rep["dropped"]})
    out = {"benchmark": smk.wildcards.benchmark, "ngram": rep["ngram"],
           "benchmark_problems": rep["benchmarks"].get(smk.wildcards.benchmark, 0),
           "training_problems": len(kept), "overlapping_benchmark_ids": overlap,
           "overlapping_training": rep["dropped"]}
    atomic_write_text(str(smk.output[0]), json.dumps(out, indent=1) + "\n")
    (log.warning if overlap else log.info)(
        "%s: %d of its problems overlap the %d training problems kept%s",
        smk.wildcards.benchmark, len(overlap), len(kept),
        f": {overlap[:20]}" if overlap else "")


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
