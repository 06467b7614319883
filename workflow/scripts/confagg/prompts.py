"""The one aggregation-prompt builder (curation and evaluation share it), and the
confidence scale the aggregator reads.

The prompt: the problem, k candidate solutions (their final part only), each
labelled with its confidence, then the AggLM-style instruction to review, correct
and combine them, asking for the answer in \\boxed{}. The confidence is on one of two
scales (`curation.confidence_scale`), and the instruction says which: `percentile`
(0..100, the rank among the solver's training samples, shown "P/100") or `raw` (the
DeepConf statistic itself, shown with two decimals). When a token budget is set
and the candidates do not fit, each is shortened from the front of its reasoning
with a visible marker, so its ending (where the answer is) survives.

Two wordings (`curation.prompt_style`): `agglm`, the paper's long instruction, for the
full-scale models; `brief`, one short line, for small models (the bundled 135M one
follows a short instruction better, and a GRPO step on the CPU costs in proportion to
the prompt's tokens).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import atomic_write_text

TRUNCATION_MARKER = "[... earlier part of this solution omitted ...]\n"

INSTRUCTION = (
    "Above are candidate solutions to the problem, written by a model that may make "
    "mistakes. {conf_note}Review each solution step by step, find and correct any errors, "
    "and combine the correct reasoning into one complete solution of your own. The candidates "
    "may all be wrong. End with the final answer in \\boxed{{}}."
)
CONF_NOTES = {
    "percentile": (
        "Each one carries the model's confidence in it, as a percentile from 0 (least "
        "confident) to 100 (most confident) among all of the model's solutions; higher "
        "confidence is more often right, but not always. "),
    "raw": (
        "Each one carries the model's raw confidence in it: the negative mean "
        "log-probability of the model's most likely next tokens while it wrote the "
        "solution, so a larger number means the model was more certain. It has no fixed "
        "range: compare the candidates' numbers with each other. Higher confidence is more "
        "often right, but not always. "),
}
SCALES = tuple(CONF_NOTES)
BRIEF_INSTRUCTION = "{conf_note}Give the correct final answer as \\boxed{{answer}}."
BRIEF_CONF_NOTES = {
    "percentile": "A higher confidence (0 to 100) is more often right. ",
    "raw": "A higher confidence is more often right. ",
}
STYLES = ("agglm", "brief")


class ConfidenceCalibration:
    """Maps a raw DeepConf statistic to its percentile (0..100) in the training pool.

    Fitted once by curation on the solver's training samples and saved as JSON, so
    evaluation shows candidates' confidence on the same scale the aggregator learned.
    """

    N_QUANTILES = 1001

    def __init__(self, metric: str, quantiles: Sequence[float], n: int):
        self.metric = metric
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        self.n = n

    @classmethod
    def fit(cls, values, metric: str) -> ConfidenceCalibration:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise ValueError(f"no finite {metric} values to fit a confidence scale on")
        q = np.quantile(v, np.linspace(0.0, 1.0, cls.N_QUANTILES))
        return cls(metric, q, int(v.size))

    def __call__(self, values) -> np.ndarray:
        """Percentiles in [0, 100] (values outside the pool's range clip to 0 or 100)."""
        v = np.asarray(values, dtype=np.float64)
        grid = np.linspace(0.0, 100.0, self.quantiles.size)
        # np.interp needs increasing x; equal quantiles (ties) still interpolate fine
        return np.interp(v, self.quantiles, grid)

    def to_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"metric": self.metric, "n": self.n,
                                            "quantiles": self.quantiles.tolist()}) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ConfidenceCalibration:
        d = json.loads(Path(path).read_text())
        return cls(d["metric"], d["quantiles"], d["n"])


def confidence_values(raw, calibration: ConfidenceCalibration, scale: str) -> list[float | None]:
    """What the prompt shows for raw statistics (training and evaluation alike): the
    percentile or the raw value, 2 decimals, None for a trace without one (NaN)."""
    _check_scale(scale)
    v = np.asarray(raw, dtype=np.float64)
    shown = calibration(v) if scale == "percentile" else v
    return [round(float(x), 2) if np.isfinite(x) else None for x in shown]


def format_confidence(value: float | None, scale: str = "percentile") -> str:
    if value is None:
        return "not available"
    return f"{value:.0f}/100" if scale == "percentile" else f"{value:.2f}"


def _check_scale(scale: str) -> None:
    if scale not in CONF_NOTES:
        raise ValueError(f"unknown confidence scale {scale!r} (known: {', '.join(SCALES)})")


def _truncate_front(text: str, max_tokens: int, tokenizer) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    keep = max(0, max_tokens - len(tokenizer.encode(TRUNCATION_MARKER, add_special_tokens=False)))
    return TRUNCATION_MARKER + tokenizer.decode(ids[len(ids) - keep:]) if keep else TRUNCATION_MARKER


def _render(problem: str, candidates: Sequence[str], confidences: Sequence[float | None],
            show_confidence: bool, scale: str, style: str = "agglm") -> str:
    brief = style == "brief"
    parts = [f"Problem:\n{problem.strip()}\n"]
    for i, cand in enumerate(candidates, start=1):
        header = f"{'Solution' if brief else 'Candidate solution'} {i}"
        if show_confidence:
            header += f" (confidence: {format_confidence(confidences[i - 1], scale)})"
        parts.append(f"{header}:\n{cand.strip()}\n")
    instruction, notes = (BRIEF_INSTRUCTION, BRIEF_CONF_NOTES) if brief else (INSTRUCTION, CONF_NOTES)
    parts.append(instruction.format(conf_note=notes[scale] if show_confidence else ""))
    return "\n".join(parts)


def build_aggregation_prompt(problem: str, candidates: Sequence[str],
                             confidences: Sequence[float | None], *, show_confidence: bool = True,
                             token_budget: int | None = None, tokenizer=None,
                             scale: str = "percentile", style: str = "agglm") -> str:
    """The aggregator's user message for one problem and its k candidates; `scale` says
    what the confidences are (see `confidence_values`), `style` the wording (STYLES)."""
    _check_scale(scale)
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r} (known: {', '.join(STYLES)})")
    if len(candidates) != len(confidences):
        raise ValueError(f"{len(candidates)} candidates but {len(confidences)} confidences")
    if not candidates:
        raise ValueError("an aggregation prompt needs at least one candidate")
    prompt = _render(problem, candidates, confidences, show_confidence, scale, style)
    if token_budget is None:
        return prompt
    if tokenizer is None:
        raise ValueError("a token budget needs the aggregator's tokenizer")

    def n_tokens(s: str) -> int:
        return len(tokenizer.encode(s, add_special_tokens=False))

    if n_tokens(prompt) <= token_budget:
        return prompt
    overhead = n_tokens(_render(problem, [""] * len(candidates), confidences, show_confidence,
                                scale, style))
    # Decoding a token suffix and encoding it again can shift a few tokens: keep a margin.
    room = token_budget - overhead - 8 * len(candidates)
    if room < 16 * len(candidates):
        raise ValueError(f"token budget {token_budget} leaves no room for {len(candidates)} "
                         f"candidates (the problem and instructions take {overhead} tokens)")
    lengths = [n_tokens(c) for c in candidates]
    # Give short candidates what they need and split the rest evenly among the long ones.
    caps = [0] * len(candidates)
    remaining, open_idx = room, sorted(range(len(candidates)), key=lambda i: lengths[i])
    while open_idx:
        share = remaining // len(open_idx)
        i = open_idx[0]
        if lengths[i] <= share:
            caps[i] = lengths[i]
            remaining -= lengths[i]
            open_idx.pop(0)
        else:
            for j in open_idx:
                caps[j] = share
            break
    shortened = [_truncate_front(c, cap, tokenizer) for c, cap in zip(candidates, caps)]
    return _render(problem, shortened, confidences, show_confidence, scale, style)
