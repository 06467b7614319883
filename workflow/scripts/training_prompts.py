"""Rule training_prompts: the run's seeded draw from a curated split (mix kept), with
the prompt of its kind: with confidence, or without (the AggLM baseline's run)."""

import json

from confagg.io import atomic_write_text
from confagg.smk import setup_logging
from confagg.train_data import select_file


def main(smk):
    log = setup_logging(smk)
    summary = select_file(smk.input[0], smk.output.rows, smk.params.cap, smk.params.seed,
                          show_confidence=bool(smk.params.show_confidence),
                          easy_share=smk.params.easy_share)
    atomic_write_text(smk.output.mix, json.dumps(summary, indent=1) + "\n")
    log.info("%s: %d of %d rows kept (cap %s, easy share %s), confidence %s; mix %s",
             smk.wildcards.split, summary["kept"], summary["rows"], smk.params.cap,
             "as curated" if smk.params.easy_share is None else smk.params.easy_share,
             "shown" if smk.params.show_confidence else "left out", summary["kept_mix"])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
