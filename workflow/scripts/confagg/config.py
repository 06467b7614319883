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


class ConfigError(ValueError):
    """An invalid config; the message starts with the offending key's path."""


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check `config` against the schema, then fill in the schema's defaults (in place).

    jsonschema's own report is long and puts the key last; this raises one line
    that starts with the key's dotted path, e.g. ``config key 'generation.n': ...``.
    """
    import jsonschema
    from snakemake.utils import validate

    with open(SCHEMA, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise ConfigError(f"config key '{path}': {err.message}{more}")
    validate(config, str(SCHEMA))  # Snakemake's validator also sets the defaults
    check_references(config)
    return config


def check_references(config: dict[str, Any]) -> None:
    """Cross-key checks a JSON schema cannot express; the message names the key."""
    models, datasets = config["models"], config["datasets"]
    for key in ("solver", "aggregator"):
        if config[key] not in models:
            raise ConfigError(f"config key '{key}': model '{config[key]}' is not defined under "
                             f"'models' (defined: {sorted(models)})")
    if config["train_dataset"] not in datasets:
        raise ConfigError(f"config key 'train_dataset': dataset '{config['train_dataset']}' is "
                         f"not defined under 'datasets' (defined: {sorted(datasets)})")
    for i, name in enumerate(config["benchmarks"]):
        if name not in datasets:
            raise ConfigError(f"config key 'benchmarks[{i}]': dataset '{name}' is not defined "
                             f"under 'datasets' (defined: {sorted(datasets)})")


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Merge YAML files in order, validate against the schema (filling defaults), check refs."""
    config: dict[str, Any] = {}
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            deep_update(config, yaml.safe_load(fh) or {})
    return validate_config(config)
