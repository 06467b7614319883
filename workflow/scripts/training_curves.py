"""Rule training_curves: reward, KL, response length and grad norm per training step."""

from confagg.smk import setup_logging
from confagg.train_curves import from_jsonl, from_tensorboard, plot


def main(smk):
    log = setup_logging(smk)
    if "history" in smk.input.keys():
        rows = from_jsonl(smk.input.history)
    else:
        rows = from_tensorboard(smk.params.tensorboard)
    shown = plot(rows, smk.output.png, f"training run {smk.params.run}: {len(rows)} steps")
    log.info("training curves of %d steps: %s", len(rows), shown)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
