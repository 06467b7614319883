"""The GRPO reward: 1 when the aggregated final answer is right by math-verify, else 0.

OpenRLHF 0.11.2 loads this file through `--reward.remote_url /abs/path/reward.py` and
calls `reward_func(queries, prompts, labels)` once per sample, with lists of length
one. `queries` are decoded prompt + response with the chat template's special
tokens; only the response is graded, so an answer that appears only among the
candidates in the prompt earns nothing. An exception there is only logged and
training dies much later, so this module never raises: errors and timeouts give
reward 0 and are counted in `extra_logs`. TRL's reward function wraps the same code.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
from pathlib import Path

# OpenRLHF loads this file by path as a top-level module, not as confagg.reward:
# make the package importable so the absolute imports below work either way.
_SCRIPTS = str(Path(__file__).resolve().parents[1])
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

log = logging.getLogger(__name__)

# Special tokens of common chat templates (ChatML, Llama 3, Mistral, SmolLM, Qwen).
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</s>|<s>|\[/?INST\]")
_grader = None


def _get_grader():
    """One pool of grading workers per process, kept warm across calls."""
    global _grader
    if _grader is None:
        from confagg.grading import Grader

        _grader = Grader(workers=1, timeout_s=5.0)
        atexit.register(_grader.close)
    return _grader


def response_part(query: str, prompt: str) -> str | None:
    """The response: the text after the prompt, special tokens removed; None when the
    prompt cannot be found in the query (then nothing can be graded safely)."""
    pos = query.rfind(prompt) if prompt else -1
    if pos < 0:
        return None
    return _SPECIAL.sub("", query[pos + len(prompt):]).strip()


def score_response(response: str | None, label: str) -> tuple[float, str]:
    """(reward, status) for one response against its gold answer. Never raises."""
    try:
        if response is None:
            return 0.0, "prompt_not_found"
        grader = _get_grader()
        answer = grader.extract([response])[0]
        if answer is None:
            return 0.0, "no_answer"
        grade = grader.grade([(str(label), answer)])[0]
        return (1.0 if grade.correct else 0.0), grade.status
    except Exception as exc:  # noqa: BLE001 (see the module docstring)
        log.warning("reward failed: %s: %s", type(exc).__name__, exc)
        return 0.0, "error"


def reward_func(queries, prompts, labels) -> dict:
    """OpenRLHF 0.11.2's contract: {"rewards", "scores", "extra_logs"} as tensors."""
    rewards, statuses = [], []
    try:
        for q, p, lab in zip(queries, prompts, labels):
            r, status = score_response(response_part(q, p), lab)
            rewards.append(r)
            statuses.append(status)
    except Exception as exc:  # noqa: BLE001 (e.g. a query that is not a string)
        log.warning("reward failed: %s", exc)
        rewards = [0.0] * len(queries)
        statuses = ["error"] * len(queries)
    try:
        import torch

        def tensor(values):
            return torch.tensor(values, dtype=torch.float32)
    except ImportError:  # the tests of this module can run without torch
        def tensor(values):
            return values
    return {
        "rewards": tensor(rewards),
        "scores": tensor(rewards),
        "extra_logs": {
            "reward_no_answer": tensor([float(s == "no_answer") for s in statuses]),
            "reward_timeout": tensor([float(s == "timeout") for s in statuses]),
            "reward_error": tensor([float(s in ("error", "prompt_not_found")) for s in statuses]),
        },
    }


def trl_reward(completions, answer, **kwargs) -> list[float]:
    """TRL GRPOTrainer reward: the completions are responses only (no prompt)."""
    out = []
    for completion, label in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(score_response(_SPECIAL.sub("", text).strip(), label)[0])
    return out
