"""Rule aggregation_sets: hard/easy sets, prompts with confidence, train/val split."""

import json

from confagg import curation
from confagg.io import atomic_write_text, write_jsonl, write_parquet
from confagg.prompts import ConfidenceCalibration
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    from transformers import AutoTokenizer

    c = smk.params.curation
    samples = curation.load_samples(smk.input.samples, c["confidence_metric"])
    dropped = curation.drop_contaminated(samples, smk.input.decontamination)
    log.info("left out %d problem(s) that overlap a benchmark (%s)", len(dropped),
             smk.input.decontamination)
    counts = {}
    sets = curation.build_sets(
        samples, k_values=list(c["k_values"]), sets_per_problem=c["sets_per_problem"],
        easy_ratio=c["easy_percent"] / 100.0, seed=c["seed"],
        on_too_few=c["on_too_few_samples"], path=smk.input.samples, counts=counts)
    if not sets:
        raise ValueError(curation.no_sets_message(smk.input.samples, counts, list(c["k_values"]),
                                                  len(samples)))
    calibration = ConfidenceCalibration.from_json(smk.input.calibration)
    if calibration.metric != curation.METRIC_COLUMNS[c["confidence_metric"]]:
        raise ValueError(f"{smk.input.calibration} is fitted on {calibration.metric}, but "
                         f"curation.confidence_metric is {c['confidence_metric']}")
    val_ids = curation.split_problems(sorted(samples), c["val_fraction"], c["seed"])
    # before the prompts (the slow part): an empty training split fails at once
    curation.check_split(sets, val_ids, c["val_fraction"], smk.input.samples)
    tokenizer = AutoTokenizer.from_pretrained(smk.params.tokenizer)
    rows = curation.make_rows(
        sets, samples, curation.load_problems(smk.input.dataset), calibration,
        show_confidence=True, scale=c["confidence_scale"],
        token_budget=c["prompt_token_budget"], tokenizer=tokenizer,
        dataset_path=smk.input.dataset, progress=True, style=c["prompt_style"])
    write_jsonl(smk.output.train, [r for r in rows if r["problem_id"] not in val_ids])
    write_jsonl(smk.output.val, [r for r in rows if r["problem_id"] in val_ids])
    write_parquet(smk.output.sets, curation.sets_table(sets, rows, val_ids))
    traces = curation.trace_report(smk.input.samples, smk.params.window, set(samples))
    rep = curation.report(sets, rows, val_ids, tokenizer, counts, decontaminated=dropped,
                          traces=traces)
    atomic_write_text(smk.output.report, json.dumps(rep, indent=2) + "\n")
    atomic_write_text(smk.output.report_md, curation.report_markdown(rep))
    log.info("curation: %s", json.dumps(rep))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
