"""DeepConf online (arXiv 2508.15260) on stock vLLM: early stopping by a logits processor.

Per problem, `warmup_traces` traces are sampled without stopping; the threshold is
`np.percentile` of their lowest group confidences at `percentile` (90 keeps only traces
as confident as the top 10% of the warm-up: DeepConf-low; 10 is DeepConf-high). The
remaining traces carry the threshold in `SamplingParams.extra_args`; the processor
below (vLLM V1's public `LogitsProcessor` interface, loaded by the engine from its
class name) computes each step's token confidence from the step's raw logits, the
same top-k log-probs that vLLM returns (raw mode) and `confidence.py` averages, and
keeps the sliding-window mean. When a full window's mean falls below the threshold,
every token but EOS is masked, so the trace ends at that step. vLLM reports such a
trace as finished by EOS; `stopped_early` recognizes it afterwards from its returned
log-probs (its last full window is below the threshold), and the sample is marked
`finish_reason: low_confidence`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm.config import VllmConfig

from .generation import LOW_CONFIDENCE  # noqa: F401 (the mark, importable from here too)

PROCESSOR_FQCN = "confagg.online:DeepConfStopProcessor"
EXTRA_KEY = "confagg_deepconf"  # SamplingParams.extra_args key: {threshold, window, k, eos}
_FLOOR = -1e4  # as confidence.py: an impossible token's -inf log-prob is floored
# The processor sums float32 log-probs, the check afterwards float64 of the returned
# ones: a window within this of the threshold at a trace's end counts as stopped.
_TOL = 1e-4


class _Tracked:
    __slots__ = ("threshold", "window", "k", "eos", "out_ids", "confs")

    def __init__(self, cfg: dict, out_ids: list[int]):
        self.threshold = float(cfg["threshold"])
        self.window = int(cfg["window"])
        self.k = int(cfg["k"])
        self.eos = int(cfg["eos"])
        self.out_ids = out_ids  # vLLM's live list of the request's output tokens
        self.confs: list[float] = []


class DeepConfStopProcessor(LogitsProcessor):
    """Ends a request (forces EOS) when its sliding-window group confidence falls
    below the threshold in its `extra_args[EXTRA_KEY]`; requests without it are untouched."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        # With speculative decoding a request owns several logits rows per step.
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError("DeepConfStopProcessor (generation.online) does not support "
                             "speculative decoding")
        self.tracked: dict[int, _Tracked] = {}

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        cfg = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if cfg is None:
            return
        missing = [key for key in ("threshold", "window", "k", "eos") if key not in cfg]
        if missing:
            raise ValueError(f"extra_args['{EXTRA_KEY}'] lacks {missing}")
        if int(cfg["window"]) < 1 or int(cfg["k"]) < 1:
            raise ValueError(f"extra_args['{EXTRA_KEY}']: window and k must be >= 1")

    def is_argmax_invariant(self) -> bool:
        return False  # forcing EOS changes the greedy choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for index in batch_update.removed:
            self.tracked.pop(index, None)
        for index, params, _, out_ids in batch_update.added:
            cfg = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            if cfg is None:
                self.tracked.pop(index, None)
            else:
                self.tracked[index] = _Tracked(cfg, out_ids)
        for a, b, direction in batch_update.moved:
            ta, tb = self.tracked.pop(a, None), self.tracked.pop(b, None)
            if ta is not None:
                self.tracked[b] = ta
            if direction == MoveDirectionality.SWAP and tb is not None:
                self.tracked[a] = tb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.tracked:
            return logits
        rows = sorted(i for i in self.tracked if i < logits.shape[0])
        if not rows:
            return logits
        kmax = max(self.tracked[i].k for i in rows)
        idx = torch.tensor(rows, device=logits.device)
        top = logits.index_select(0, idx).float().log_softmax(dim=-1).topk(kmax, dim=-1).values
        top = top.clamp_min(_FLOOR).cpu().numpy().astype(np.float64)
        for j, i in enumerate(rows):
            t = self.tracked[i]
            conf = -float(top[j, :t.k].mean())
            # The position this step samples; a repeated position (a step whose token
            # was discarded) overwrites its earlier value.
            del t.confs[len(t.out_ids):]
            t.confs.append(conf)
            if len(t.confs) >= t.window and sum(t.confs[-t.window:]) / t.window < t.threshold:
                logits[i] = float("-inf")
                logits[i, t.eos] = 0.0
        return logits


def threshold(lowest_groups, percentile: float) -> float:
    """The stopping threshold from the warm-up traces' lowest group confidences."""
    values = np.asarray([v for v in lowest_groups if math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        raise ValueError("no warm-up trace has a confidence (all empty)")
    return float(np.percentile(values, percentile))


def stopped_early(conf: np.ndarray, thr: float, window: int, finish_reason: str | None) -> bool:
    """Whether a trace sampled under threshold `thr` was ended by the processor: it
    ended on EOS and its last full window is below the threshold."""
    c = np.asarray(conf, dtype=np.float64)
    if finish_reason not in (None, "stop") or c.size < window:
        return False
    return float(c[-window:].mean()) < thr + _TOL


def extra_args(thr: float, window: int, k: int, eos: int) -> dict:
    return {EXTRA_KEY: {"threshold": float(thr), "window": int(window), "k": int(k),
                        "eos": int(eos)}}
