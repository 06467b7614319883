"""The GRPO reward: 1 when the aggregator's final answer is right by math-verify, else 0.

OpenRLHF 0.11.2 loads this file through `--reward.remote_url /abs/path/reward.py` and
calls `reward_func(queries, prompts, labels)` once per sample, with lists of length
one, from many threads at once (`asyncio.to_thread` per sample). `queries` are
decoded prompt + response with the chat template's special tokens; only the response
is graded, so an answer that appears only among the candidates in the prompt earns
nothing. An exception there is only logged and training dies much later, so this
module never raises: bad input, errors and timeouts give reward 0 and are flagged in
`extra_logs`. TRL's reward function (`trl_reward`) wraps the same code.

Settings (`RewardSettings`): `require_boxed` (config `training.reward.require_boxed`):
only the last `\\boxed{}` of the response counts, and a response without one earns 0;
off, an unboxed response is graded by math-verify's own answer extraction.
`timeout_s` (config `grading.timeout_s`) is the hard CPU-time limit per math-verify
call. TRL's job calls `configure`; OpenRLHF's job passes them in the environment
variable CONFAGG_REWARD as JSON (`RewardSettings.env()`), read when this file loads.

Thread safety: each call borrows one of `workers` graders (each a single math-verify
process with its own bounded cache), so concurrent calls run side by side and a
timeout holds up only the call that hit it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import shlex
import sys
import threading
from pathlib import Path
from typing import NamedTuple

# OpenRLHF loads this file by path as a top-level module, not as confagg.reward:
# make the package importable so the absolute imports below work either way.
_SCRIPTS = str(Path(__file__).resolve().parents[1])
if _SCRIPTS not in sys.path:
    sys.path.append(_SCRIPTS)

from confagg.grading import Grader, last_boxed  # noqa: E402

log = logging.getLogger(__name__)

ENV = "CONFAGG_REWARD"
# Special tokens of common chat templates (ChatML, Llama 3, Mistral, SmolLM, Qwen).
_SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|</s>|<s>|\[/?INST\]")
_CACHE_SIZE = 4096  # per grader: (gold, answer) verdicts, never whole responses


class RewardSettings(NamedTuple):  # not a dataclass: OpenRLHF's loader leaves sys.modules alone
    require_boxed: bool = True
    timeout_s: float = 5.0
    workers: int = 2

    @classmethod
    def from_mapping(cls, values: dict, where: str) -> RewardSettings:
        """Checked settings; a bad key or value raises ValueError naming `where`."""
        if not isinstance(values, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(cls._fields))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        out = cls(**values)
        if not isinstance(out.require_boxed, bool):
            raise ValueError(f"{where}.require_boxed: expected true or false, "
                             f"got {out.require_boxed!r}")
        if isinstance(out.timeout_s, bool) or not isinstance(out.timeout_s, (int, float)) \
                or not out.timeout_s > 0:
            raise ValueError(f"{where}.timeout_s: expected a number > 0, got {out.timeout_s!r}")
        if isinstance(out.workers, bool) or not isinstance(out.workers, int) or out.workers < 1:
            raise ValueError(f"{where}.workers: expected an integer >= 1, got {out.workers!r}")
        return out

    @classmethod
    def from_env(cls) -> RewardSettings:
        raw = os.environ.get(ENV)
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"environment variable {ENV}: not JSON ({exc})") from None
        return cls.from_mapping(values, ENV)

    def env(self) -> str:
        """The value of CONFAGG_REWARD that carries these settings."""
        return json.dumps(self._asdict(), sort_keys=True)

    def shell_prefix(self) -> str:
        """`CONFAGG_REWARD='...'` to put before a shell command (OpenRLHF's job: Ray's
        workers on the job's node inherit the variable)."""
        return f"{ENV}={shlex.quote(self.env())}"


class _Graders:
    """Up to `workers` single-process graders, lent to one call at a time."""

    def __init__(self, settings: RewardSettings):
        self.settings = settings
        self._free: queue.SimpleQueue[Grader] = queue.SimpleQueue()
        self._all: list[Grader] = []
        self._lock = threading.Lock()

    def borrow(self) -> Grader:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._all) < self.settings.workers:
                g = Grader(workers=1, timeout_s=self.settings.timeout_s, cache_size=_CACHE_SIZE)
                self._all.append(g)
                return g
        return self._free.get()

    def give_back(self, grader: Grader) -> None:
        self._free.put(grader)

    def close(self) -> None:
        with self._lock:
            for g in self._all:
                g.close()


_settings = RewardSettings.from_env()
_graders: _Graders | None = None
_graders_lock = threading.Lock()


def configure(**settings) -> RewardSettings:
    """Set the reward's settings (keys of RewardSettings) for this process."""
    global _settings, _graders
    new = RewardSettings.from_mapping({**_settings._asdict(), **settings}, "reward settings")
    with _graders_lock:
        _settings = new
        if _graders is not None:
            _graders.close()
            _graders = None
    return new


def settings() -> RewardSettings:
    return _settings


def _pool() -> _Graders:
    global _graders
    with _graders_lock:
        if _graders is None:
            _graders = _Graders(_settings)
            atexit.register(_graders.close)
        return _graders


def response_part(query: str, prompt: str) -> str | None:
    """The response: the text after the prompt, special tokens removed; None when the
    prompt cannot be found in the query (then nothing can be graded safely)."""
    pos = query.rfind(prompt) if prompt else -1
    if pos < 0:
        return None
    return _SPECIAL.sub("", query[pos + len(prompt):]).strip()


def _gold(label) -> str | None:
    """The gold answer as a string; None for a label that is not one (e.g. bytes)."""
    if isinstance(label, str) and label.strip():
        return label.strip()
    if isinstance(label, int) and not isinstance(label, bool):
        return str(label)
    return None


def score_response(response: str | None, label) -> tuple[float, str]:
    """(reward, status) for one response against its gold answer. Never raises.
    Statuses: ok, no_answer, timeout, error, prompt_not_found, bad_input."""
    try:
        if response is None:
            return 0.0, "prompt_not_found"
        gold = _gold(label)
        if gold is None or not isinstance(response, str):
            log.warning("reward: bad input: response %s, label %.80r",
                        type(response).__name__, label)
            return 0.0, "bad_input"
        s = _settings
        pool = _pool()
        grader = pool.borrow()
        try:
            if s.require_boxed:
                answer = last_boxed(response)
            else:
                answer = grader.extract([response])[0]
            if answer is None:
                return 0.0, "no_answer"
            grade = grader.grade([(gold, answer)])[0]
        finally:
            pool.give_back(grader)
        return (1.0 if grade.correct else 0.0), grade.status
    except Exception as exc:  # noqa: BLE001 (see the module docstring)
        log.warning("reward failed: %s: %s", type(exc).__name__, exc)
        return 0.0, "error"


def _as_list(x) -> list | None:
    if x is None:
        return None
    if isinstance(x, (str, bytes)):
        return [x]
    try:
        return list(x)
    except TypeError:
        return [x]


def _tensor(values):
    try:
        import torch

        return torch.tensor(values, dtype=torch.float32)
    except ImportError:  # the tests of this module can run without torch
        return values


def reward_func(queries=None, prompts=None, labels=None, **kwargs) -> dict:
    """OpenRLHF 0.11.2's contract: {"rewards", "scores", "extra_logs"} as tensors, one
    entry per query. Never raises: a sample without its query, prompt and label (length
    mismatch, None) or with one of the wrong type earns 0 and is flagged in
    `extra_logs["reward_error"]`."""
    rewards, statuses = [], []
    try:
        q, p, lab = (_as_list(x) for x in (queries, prompts, labels))
        n = len(q) if q is not None else max(len(p or []), len(lab or []), 1)
        if any(x is None or len(x) != n for x in (q, p, lab)):
            log.warning("reward: %s queries, %s prompts, %s labels: unmatched samples earn 0",
                        *(None if x is None else len(x) for x in (q, p, lab)))
        for i in range(n):
            if any(x is None or i >= len(x) for x in (q, p, lab)):
                r, status = 0.0, "bad_input"
            elif not isinstance(q[i], str) or not isinstance(p[i], str):
                r, status = 0.0, "bad_input"
            else:
                r, status = score_response(response_part(q[i], p[i]), lab[i])
            rewards.append(r)
            statuses.append(status)
    except Exception as exc:  # noqa: BLE001 (e.g. an object whose len() fails)
        log.warning("reward failed: %s: %s", type(exc).__name__, exc)
        rewards, statuses = [0.0], ["error"]
    bad = ("error", "prompt_not_found", "bad_input")
    return {
        "rewards": _tensor(rewards),
        "scores": _tensor(rewards),
        "extra_logs": {
            "reward_no_answer": _tensor([float(s == "no_answer") for s in statuses]),
            "reward_timeout": _tensor([float(s == "timeout") for s in statuses]),
            "reward_error": _tensor([float(s in bad) for s in statuses]),
        },
    }


def _completion_text(completion) -> str | None:
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        completion = completion[-1].get("content")
    return completion if isinstance(completion, str) else None


def trl_reward(completions, answer=None, **kwargs) -> list[float]:
    """TRL GRPOTrainer reward: the completions are responses only (no prompt). One
    reward per completion; a completion without text or label earns 0. Never raises."""
    try:
        comps = _as_list(completions) or []
        labels = _as_list(answer) or []
        if len(labels) != len(comps):
            log.warning("reward: %d completions, %d answers: unmatched ones earn 0",
                        len(comps), len(labels))
        out = []
        for i, completion in enumerate(comps):
            text = _completion_text(completion)
            if text is None or i >= len(labels):
                out.append(0.0)
                continue
            out.append(score_response(_SPECIAL.sub("", text).strip(), labels[i])[0])
        return out
    except Exception as exc:  # noqa: BLE001
        log.warning("reward failed: %s: %s", type(exc).__name__, exc)
        n = len(completions) if isinstance(completions, list) else 0
        return [0.0] * n
