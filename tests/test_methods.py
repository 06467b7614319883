"""The aggregator-method registry is the one list: the schema, the rules and the report
agree with it."""

from __future__ import annotations

import re

import pytest
import yaml
from confagg import report
from confagg.methods import (
    AGG_METHODS,
    AGGLM,
    BASE,
    COMPARISONS,
    TRAINED,
    agg_method,
    model_run,
    training_runs,
    wildcard_pattern,
)
from conftest import REPO


def test_schema_enum_and_default_are_the_registry():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    prop = schema["properties"]["evaluation"]["properties"]["agg_methods"]
    assert prop["items"]["enum"] == list(AGG_METHODS)
    assert prop["default"] == list(AGG_METHODS)


def test_report_orders_the_registered_aggregators():
    assert tuple(report.AGGREGATORS) == tuple(AGG_METHODS)


def test_rules_name_no_method():
    """A method's name in a rule file would be a second place to edit."""
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for name in AGG_METHODS:
        assert not re.search(rf"[\"'|]{name}[\"'|]", rules), name


def test_lookup_and_wildcard():
    assert agg_method("agg_prompted").model == BASE
    assert agg_method("conf_agg").model == TRAINED
    assert agg_method("conf_agg_noconf").show_confidence is False
    # AggLM: its own run, trained and evaluated without confidence
    assert agg_method("agglm").model == AGGLM
    assert agg_method("agglm").show_confidence is False
    pattern = re.compile(wildcard_pattern())
    assert all(pattern.fullmatch(n) for n in AGG_METHODS)
    assert not pattern.fullmatch("conf_agg_other")
    with pytest.raises(KeyError, match="unknown aggregator method 'aggx'.*conf_agg"):
        agg_method("aggx")


def test_each_method_reads_its_runs_model():
    runs = dict(run="conf-run", agglm_run="agglm-run")
    assert model_run("conf_agg", **runs) == "conf-run"
    assert model_run("conf_agg_noconf", **runs) == "conf-run"
    assert model_run("agglm", **runs) == "agglm-run"
    assert model_run("agg_prompted", **runs) is None
    # the confidence run is always trained; the AggLM run only when a method reads it
    assert training_runs(["conf_agg", "agg_prompted"], **runs) == ["conf-run"]
    assert training_runs(["agglm", "conf_agg"], **runs) == ["conf-run", "agglm-run"]
    assert training_runs(["agg_prompted"], **runs) == ["conf-run"]


def test_comparisons_name_registered_methods():
    """The paired aggregator comparisons of the report: the value of training and the
    value of confidence, both against conf_agg."""
    pairs = {(a, b) for a, b, _ in COMPARISONS}
    assert {("conf_agg", "agg_prompted"), ("conf_agg", "agglm")} <= pairs
    assert all(a in AGG_METHODS and b in AGG_METHODS and a != b for a, b in pairs)
