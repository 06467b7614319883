"""The registry of Stage 4 aggregator methods: the one place that says which methods
exist and what each needs. The rules (wildcard constraint, model input, params), the
report's method order and a test against the config schema's enum all read it.

Adding a method: one `AggMethod` entry here, its name in the schema's
`evaluation.agg_methods` enum (a test checks that they agree), and, if it needs more
than a model and whether confidence is shown, its implementation in aggregate.py."""

from __future__ import annotations

from dataclasses import dataclass

# Where a method's model comes from.
TRAINED = "trained"  # the GRPO run's model, results/train/{run}/model
BASE = "base"  # config `aggregator`, untrained


@dataclass(frozen=True)
class AggMethod:
    name: str
    model: str  # TRAINED or BASE
    show_confidence: bool  # the candidates' confidence is in the prompt
    description: str


AGG_METHODS: dict[str, AggMethod] = {m.name: m for m in (
    AggMethod("conf_agg", TRAINED, True, "the trained aggregator, confidence shown"),
    AggMethod("conf_agg_noconf", TRAINED, False,
              "the same trained model, confidence hidden"),
    AggMethod("agg_prompted", BASE, True, "the untrained base model, confidence shown"),
)}

for _m in AGG_METHODS.values():
    if _m.model not in (TRAINED, BASE):
        raise ValueError(f"aggregator method {_m.name}: model must be {TRAINED!r} or {BASE!r}")


def agg_method(name: str) -> AggMethod:
    try:
        return AGG_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown aggregator method {name!r} (evaluation.agg_methods); known: "
                       f"{', '.join(AGG_METHODS)} (confagg/methods.py)") from None


def wildcard_pattern() -> str:
    """The `{method}` wildcard's constraint: exactly the registered names."""
    return "|".join(AGG_METHODS)
