"""Rule generate: n samples per problem for one shard, with DeepConf confidence."""

from confagg.gpu import acquire_gpus
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    acquire_gpus(int(smk.resources.get("gpu", 0)))  # before vLLM initializes CUDA
    from confagg.generation import generate_shard

    p = smk.params
    rows = generate_shard(
        dataset_path=smk.input.dataset, out_path=smk.output[0], progress_dir=p.progress_dir,
        shard=int(smk.wildcards.shard), n_shards=p.n_shards, n=p.n, model_path=p.model_path,
        model_spec=dict(p.model_spec), vllm_cfg=dict(p.vllm), sampling=dict(p.sampling),
        conf_window=p.conf_window, batch_problems=p.batch_problems, online=dict(p.online))
    log.info("wrote %d samples to %s", rows, smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
