"""The aggregator-method registry is the one list: the schema, the rules and the report
agree with it."""

from __future__ import annotations

import re

import pytest
import yaml
from confagg import report
from confagg.methods import AGG_METHODS, BASE, TRAINED, agg_method, wildcard_pattern
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
    pattern = re.compile(wildcard_pattern())
    assert all(pattern.fullmatch(n) for n in AGG_METHODS)
    assert not pattern.fullmatch("conf_agg_other")
    with pytest.raises(KeyError, match="unknown aggregator method 'agglm'.*conf_agg"):
        agg_method("agglm")
