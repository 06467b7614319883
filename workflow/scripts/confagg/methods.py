"""The registry of Stage 4 aggregator methods: the one place that says which methods
exist and what each needs. The rules (wildcard constraint, model input, params), the
report's method order and a test against the config schema's enum all read it.

Adding a method: one `AggMethod` entry here, its name in the schema's
`evaluation.agg_methods` enum (a test checks that they agree), and, if it needs more
than a model and whether confidence is shown, its implementation in aggregate.py.
`agglm` is the AggLM baseline: a second GRPO run (training.agglm_run) on the same
curated sets, its prompts without confidence."""

from __future__ import annotations

from dataclasses import dataclass

# Where a method's model comes from.
TRAINED = "trained"  # the confidence run's model, results/train/{training.run}/model
AGGLM = "agglm"  # the AggLM run's (trained without confidence), training.agglm_run
BASE = "base"  # config `aggregator`, untrained
KINDS = (TRAINED, AGGLM, BASE)


@dataclass(frozen=True)
class AggMethod:
    name: str
    model: str  # one of KINDS
    show_confidence: bool  # the candidates' confidence is in the prompt
    description: str


AGG_METHODS: dict[str, AggMethod] = {m.name: m for m in (
    AggMethod("conf_agg", TRAINED, True, "the trained aggregator, confidence shown"),
    AggMethod("agglm", AGGLM, False,
              "AggLM: trained on the same sets without confidence, none shown"),
    AggMethod("conf_agg_noconf", TRAINED, False,
              "the confidence-trained model, confidence hidden"),
    AggMethod("agg_prompted", BASE, True, "the untrained base model, confidence shown"),
)}

for _m in AGG_METHODS.values():
    if _m.model not in KINDS:
        raise ValueError(f"aggregator method {_m.name}: model must be one of {KINDS}")

# The report's paired comparisons between aggregators at the same m (method, baseline,
# what the difference measures); one is left out when either side is not evaluated.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("conf_agg", "agg_prompted", "value of training"),
    ("conf_agg", "agglm", "value of confidence"),
    ("conf_agg", "conf_agg_noconf", "confidence shown at inference"),
)


def agg_method(name: str) -> AggMethod:
    try:
        return AGG_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown aggregator method {name!r} (evaluation.agg_methods); known: "
                       f"{', '.join(AGG_METHODS)} (confagg/methods.py)") from None


def model_run(name: str, *, run: str, agglm_run: str) -> str | None:
    """The training run whose model method `name` reads (None: the base model)."""
    kind = agg_method(name).model
    return {TRAINED: run, AGGLM: agglm_run, BASE: None}[kind]


def training_runs(methods, *, run: str, agglm_run: str) -> list[str]:
    """The runs to train: the confidence run always, the AggLM run when a method reads it."""
    runs = [run]
    for name in methods:
        r = model_run(name, run=run, agglm_run=agglm_run)
        if r is not None and r not in runs:
            runs.append(r)
    return runs


def wildcard_pattern() -> str:
    """The `{method}` wildcard's constraint: exactly the registered names."""
    return "|".join(AGG_METHODS)
