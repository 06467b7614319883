"""Rule train_trl: GRPO with TRL on one machine; resumes from its last checkpoint."""

import json

from confagg.gpu import acquire_gpus
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    cfg = dict(smk.params.training)
    use_cpu = cfg["trl"]["use_cpu"] or not acquire_gpus(int(smk.resources.get("gpu", 0)))
    from confagg.train_trl import train

    summary = train(cfg, model_path=smk.params.model_path, train_path=smk.input.train,
                    output_dir=smk.output.model, ckpt_dir=smk.params.ckpt_dir,
                    log_path=smk.output.history, use_cpu=use_cpu,
                    tensorboard_dir=smk.params.tensorboard)
    log.info("trained: %s", json.dumps(summary))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
