"""Rule calibrate_confidence: the percentile scale of the solver's confidence."""

from confagg.curation import METRIC_COLUMNS
from confagg.io import read_parquet
from confagg.prompts import ConfidenceCalibration
from confagg.smk import setup_logging


def main(smk):
    log = setup_logging(smk)
    col = METRIC_COLUMNS[smk.params.metric]
    values = read_parquet(smk.input[0], [col]).column(col).to_numpy()
    cal = ConfidenceCalibration.fit(values, col)
    cal.to_json(smk.output[0])
    log.info("fitted %s percentiles on %d samples", col, cal.n)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
