"""Rule prepare_bundled_model: the bundled GGUF as a plain Hugging Face folder."""

from confagg.models import prepare_bundled_model
from confagg.smk import setup_logging


def main(smk):
    setup_logging(smk)
    prepare_bundled_model(smk.wildcards.bundled, smk.output[0])


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
