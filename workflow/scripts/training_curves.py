"""Rule training_curves: reward, KL, response length and grad norm per training step,
a line per trained run (the confidence run, and the AggLM baseline's when it is trained)."""

from confagg.smk import setup_logging
from confagg.train_curves import from_jsonl, from_tensorboard, plot


def main(smk):
    log = setup_logging(smk)
    runs = list(smk.params.runs)
    if "history" in smk.input.keys():
        rows = {run: from_jsonl(path) for run, path in zip(runs, smk.input.history)}
    else:
        rows = {run: from_tensorboard(tb) for run, tb in zip(runs, smk.params.tensorboards)}
    runs_text = ", ".join(f"{run} ({len(r)} steps)" for run, r in rows.items())
    shown = plot(rows, smk.output.png, f"GRPO training: {runs_text}")
    log.info("training curves of %s: %s", runs_text, shown)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
