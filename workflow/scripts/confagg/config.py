"""The workflow config outside Snakemake: load, merge overlays, validate, check references.

rules/common.smk validates Snakemake's config with this module's `validate_config` (and
`check_config_files`); tests, `make bench`, `make plan` and scripts load the merged config
with `load_config`.
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


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _no_duplicates(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{loader.name}, line {key_node.start_mark.line + 1}: duplicate key '{key}' "
                f"(first at line {seen[key] + 1}); YAML would keep only the last value")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_strict(path: str | Path) -> Any:
    """A YAML (or JSON) config file; a key given twice in a mapping is a ConfigError."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def check_config_files(paths) -> None:
    """Re-read the config files Snakemake loaded (its loader keeps the last of duplicate
    keys silently) and refuse duplicates, naming file, line and key."""
    for path in paths:
        load_yaml_strict(path)


def _strict_validator():
    """Draft 2020-12 with 'integer' meaning a true int: JSON Schema counts 4.0 as an
    integer, which then fails far away (range(4.0))."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check `config` against the schema, then fill in the schema's defaults (in place).

    jsonschema's own report is long and puts the key last; this raises one line
    that starts with the key's dotted path, e.g. ``config key 'generation.n': ...``.
    """
    import jsonschema
    from snakemake.utils import validate

    with open(SCHEMA, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    errors = list(_strict_validator()(schema).iter_errors(config))
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
        if name in config["benchmarks"][:i]:
            raise ConfigError(f"config key 'benchmarks[{i}]': '{name}' is listed twice "
                             f"(first at benchmarks[{config['benchmarks'].index(name)}])")
        if name == config["train_dataset"]:
            raise ConfigError(f"config key 'benchmarks[{i}]': '{name}' is also the "
                             f"train_dataset; evaluate on data the aggregator was not trained on")
    for i, name in enumerate(config["curation"].get("decontaminate_against") or []):
        if name not in datasets:
            raise ConfigError(f"config key 'curation.decontaminate_against[{i}]': dataset "
                             f"'{name}' is not defined under 'datasets' (defined: {sorted(datasets)})")
    check_cross_keys(config)


def samples_per_problem(config: dict[str, Any], dataset: str) -> int:
    """A dataset's samples per problem: its n_samples, else generation.n."""
    return config["datasets"][dataset].get("n_samples") or config["generation"]["n"]


def check_cross_keys(config: dict[str, Any]) -> None:
    """Rules between keys that would otherwise fail hours later; the message names the key."""
    import string

    for name, model in config["models"].items():
        template = model.get("prompt_template") or "{problem}"
        why = None
        try:
            extra = sorted({"{" + f + "}" for _, f, _, _ in string.Formatter().parse(template)
                            if f is not None and f != "problem"})
        except ValueError as exc:  # a single brace
            why = str(exc)
        else:
            if extra:
                why = f"placeholder(s) {', '.join(extra)} besides {{problem}}"
            else:
                try:
                    template.format(problem="")
                except (ValueError, IndexError, KeyError, AttributeError) as exc:
                    why = str(exc)
        if why:
            raise ConfigError(
                f"config key 'models.{name}.prompt_template': {template!r} is not a str.format "
                f"template with {{problem}} only ({why}); write literal braces doubled, e.g. "
                "\\boxed{{}}")

    train = config["train_dataset"]
    n = samples_per_problem(config, train)
    too_big = [k for k in config["curation"]["k_values"] if k > n]
    if too_big:
        where = (f"datasets.{train}.n_samples" if config["datasets"][train].get("n_samples")
                 else "generation.n")
        raise ConfigError(f"config key 'curation.k_values': {too_big} exceed the {n} samples "
                         f"per problem of train_dataset '{train}' ({where})")

    training = config["training"]
    if training["agglm_run"] == training["run"]:
        raise ConfigError(
            f"config key 'training.agglm_run': '{training['agglm_run']}' is also training.run; "
            "the AggLM baseline is a second run and needs its own name")
    if training["trainer"] == "trl":
        trl = training["trl"]
        # TRL's GRPOConfig: per_device_train_batch_size x processes (1 here) x
        # steps_per_generation (= gradient_accumulation_steps) must hold whole groups.
        batch = trl["per_device_batch_size"] * trl["gradient_accumulation_steps"]
        if batch % training["group_size"]:
            raise ConfigError(
                f"config key 'training.trl.per_device_batch_size': "
                f"{trl['per_device_batch_size']} x gradient_accumulation_steps "
                f"{trl['gradient_accumulation_steps']} = {batch} completions per generation "
                f"batch is not a multiple of training.group_size {training['group_size']} "
                "(TRL's GRPO needs whole groups)")


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Merge YAML files in order, validate against the schema (filling defaults), check refs."""
    config: dict[str, Any] = {}
    for p in paths:
        deep_update(config, load_yaml_strict(p) or {})
    return validate_config(config)
