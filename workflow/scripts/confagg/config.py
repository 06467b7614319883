"""The workflow config outside Snakemake: load, merge overlays, validate, check references.

Snakemake does the same in rules/common.smk (with `snakemake.utils.validate`); this
module serves tests, benchmarks and scripts that need the merged config.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def deep_update(base: dict, overlay: dict) -> dict:
    """Merge `overlay` into `base` recursively (dicts merge, other values replace), as Snakemake does."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def check_references(config: dict[str, Any]) -> None:
    """Cross-key checks a JSON schema cannot express; the message names the key."""
    models, datasets = config["models"], config["datasets"]
    for key in ("solver", "aggregator"):
        if config[key] not in models:
            raise ValueError(f"config key '{key}': model '{config[key]}' is not defined under "
                             f"'models' (defined: {sorted(models)})")
    if config["train_dataset"] not in datasets:
        raise ValueError(f"config key 'train_dataset': dataset '{config['train_dataset']}' is "
                         f"not defined under 'datasets' (defined: {sorted(datasets)})")
    for i, name in enumerate(config["benchmarks"]):
        if name not in datasets:
            raise ValueError(f"config key 'benchmarks[{i}]': dataset '{name}' is not defined "
                             f"under 'datasets' (defined: {sorted(datasets)})")


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Merge YAML files in order, validate against the schema (filling defaults), check refs."""
    from snakemake.utils import validate

    config: dict[str, Any] = {}
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            deep_update(config, yaml.safe_load(fh) or {})
    validate(config, str(SCHEMA))
    check_references(config)
    return config
