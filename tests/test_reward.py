"""The GRPO reward (OpenRLHF contract and TRL wrapper) with real math-verify."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch
from confagg import reward
from confagg.reward import RewardSettings, configure, response_part, reward_func, trl_reward
from confagg.train_openrlhf import REWARD_FILE
from confagg.workerpool import wall_backstop

PROMPT = ("<|im_start|>user\nProblem:\nWhat is 6 * 7?\n\nCandidate solution 1 (confidence: "
          "80/100):\nIt is \\boxed{42}\n<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(autouse=True)
def default_settings():
    configure(**RewardSettings()._asdict())
    yield
    configure(**RewardSettings()._asdict())


def one(response, label="42"):
    out = reward_func([PROMPT + response + "<|im_end|>"], [PROMPT], [label])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (1,)
    return out["rewards"].item(), {k: v.item() for k, v in out["extra_logs"].items()}


def test_right_wrong_and_equivalent_forms():
    assert one("So the product is \\boxed{42}.")[0] == 1.0
    assert one("I get \\boxed{41}.")[0] == 0.0
    assert one("\\boxed{\\frac{84}{2}}")[0] == 1.0
    assert one("\\boxed{0.5}", label="\\frac{1}{2}")[0] == 1.0
    assert one("\\boxed{42}", label=42)[0] == 1.0  # an integer label converts exactly


def test_only_the_last_boxed_answer_counts():
    assert RewardSettings().require_boxed is True
    reward_, logs = one("6 * 7 = 42")  # right, but not boxed
    assert reward_ == 0.0 and logs["reward_no_answer"] == 1.0
    assert one("3+4 = 7", label="7")[0] == 0.0
    assert one("\\boxed{7} hmm actually 8", label="7")[0] == 1.0
    assert one("\\boxed{8} hmm actually \\boxed{7}", label="8")[0] == 0.0


def test_without_require_boxed_an_unboxed_answer_is_extracted():
    configure(require_boxed=False)
    assert one("6 * 7 = 42")[0] == 1.0
    assert one("\\boxed{7} hmm actually 8", label="7")[0] == 1.0  # a box still comes first


def test_no_answer_scores_zero_and_is_logged():
    reward_, logs = one("I am not sure.")
    assert reward_ == 0.0 and logs["reward_no_answer"] == 1.0 and logs["reward_error"] == 0.0


def test_answer_only_in_the_prompt_earns_nothing():
    # The candidate in the prompt says 42; the response says nothing numeric.
    assert one("Let me think again about this.")[0] == 0.0
    assert response_part(PROMPT + "abc<|im_end|>", PROMPT) == "abc"
    # A prompt that is not inside the query: nothing is graded, reward 0.
    out = reward_func(["\\boxed{42}"], ["some other prompt"], ["42"])
    assert out["rewards"].item() == 0.0 and out["extra_logs"]["reward_error"].item() == 1.0


def test_pathological_expression_times_out_at_the_configured_limit():
    configure(timeout_s=1.0)
    start = time.monotonic()
    reward_, logs = one("\\boxed{10^{10^{10^{10^{10^{10}}}}}}", label="1.5")
    elapsed = time.monotonic() - start
    assert reward_ == 0.0 and logs["reward_timeout"] == 1.0 and logs["reward_error"] == 0.0
    assert [g.timeout_s for g in reward._pool()._all] == [1.0]  # not a fixed 5 s
    assert elapsed < wall_backstop(1.0)


def test_no_input_raises_and_bad_input_is_flagged():
    def logs(out):
        return out["rewards"].tolist(), out["extra_logs"]["reward_error"].tolist()

    q = PROMPT + "\\boxed{42}"
    assert logs(reward_func(None, None, None)) == ([0.0], [1.0])
    assert logs(reward_func([None], [PROMPT], ["42"])) == ([0.0], [1.0])
    assert logs(reward_func([q.encode()], [PROMPT], ["42"])) == ([0.0], [1.0])
    assert logs(reward_func([q], [PROMPT], [b"42"])) == ([0.0], [1.0])
    assert logs(reward_func([q], [PROMPT], [None])) == ([0.0], [1.0])
    assert logs(reward_func([q], [PROMPT], [""])) == ([0.0], [1.0])
    assert logs(reward_func([q], [PROMPT], [42.0])) == ([0.0], [1.0])
    # Mismatched lengths: one reward per query, the unmatched one flagged, none cut.
    assert logs(reward_func([q, q], [PROMPT], ["42"])) == ([1.0, 0.0], [0.0, 1.0])
    assert logs(reward_func([q], [PROMPT, PROMPT], ["42", "42"])) == ([1.0], [0.0])
    assert logs(reward_func([q], [PROMPT], ["42"], extra=1)) == ([1.0], [0.0])


def test_trl_wrapper_grades_completions_and_never_raises():
    completions = [[{"role": "assistant", "content": "\\boxed{42}"}],
                   [{"role": "assistant", "content": "\\boxed{7}"}], "plain 42",
                   [{"role": "assistant", "content": None}], None, [], 42]
    assert trl_reward(completions, answer=["42"] * 7) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert trl_reward(["\\boxed{42}", "\\boxed{42}"], answer=["42"]) == [1.0, 0.0]
    assert trl_reward(["\\boxed{42}"], answer=None) == [0.0]
    assert trl_reward(None, answer=None) == []
    configure(require_boxed=False)
    assert trl_reward(["plain 42"], answer=["42"]) == [1.0]


def test_settings_are_checked_and_name_the_key():
    with pytest.raises(ValueError, match="require_boxed"):
        configure(require_boxed="yes")
    with pytest.raises(ValueError, match="timeout_s"):
        configure(timeout_s=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['boxed'\]"):
        configure(boxed=True)


# Fractions, LaTeX and integers; right and wrong (labels and responses).
CASES = [("\\frac{1}{2}", "\\boxed{0.5}"), ("3/4", "\\boxed{\\frac{6}{8}}"),
         ("\\frac{2}{3}", "\\boxed{0.66}"), ("\\sqrt{2}", "\\boxed{\\sqrt{2}}"),
         ("x^2+1", "\\boxed{1+x^2}"), ("\\pi", "\\boxed{\\frac{22}{7}}"),
         ("42", "\\boxed{42}"), ("17", "\\boxed{71}"), ("-3", "\\boxed{-\\frac{9}{3}}"),
         ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"), ("\\frac{5}{6}", "\\boxed{\\frac{10}{12}}"),
         ("100", "the answer is 100")]


def test_64_threads_at_once_get_the_sequential_rewards():
    # OpenRLHF 0.11.2 calls the reward per sample (lists of length 1) from many threads
    # at once. Before: 2 of 16 right answers rewarded, or a deadlock.
    samples = [CASES[i % len(CASES)] for i in range(64)]

    def call(label, response):
        out = reward_func([PROMPT + response + "<|im_end|>"], [PROMPT], [label])
        return out["rewards"].item(), out["extra_logs"]["reward_error"].item()

    results: list = [None] * 64
    barrier = threading.Barrier(64)

    def worker(i):
        barrier.wait()
        results[i] = call(*samples[i])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(64)]
    start = time.monotonic()  # cold: no verdict cached yet
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, 120 - (time.monotonic() - start)))
    assert not any(t.is_alive() for t in threads), "reward_func hung under concurrency"
    configure(**RewardSettings()._asdict())  # fresh graders, empty caches
    sequential = [call(*s) for s in samples]
    assert {r for r, _ in sequential} == {0.0, 1.0} and {e for _, e in sequential} == {0.0}
    assert results == sequential


def _load_by_path(tmp_path, code: str, env: dict) -> subprocess.CompletedProcess:
    """OpenRLHF imports the file with spec_from_file_location as a top-level module."""
    prog = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('reward_func', {str(REWARD_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n" + code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env}, timeout=120)


def test_loads_by_path_the_way_openrlhf_does_with_settings_from_the_environment(tmp_path):
    code = ("print(mod.settings().require_boxed, mod.settings().timeout_s)\n"
            "for r in ['Q: 2+2? A: \\\\boxed{4}', 'Q: 2+2? A: 4']:\n"
            "    print(mod.reward_func([r], ['Q: 2+2? A:'], ['4'])['rewards'].tolist())\n")
    proc = _load_by_path(tmp_path, code, {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["True 5.0", "[1.0]", "[0.0]"]
    env = {reward.ENV: RewardSettings(require_boxed=False, timeout_s=2.5).env()}
    proc = _load_by_path(tmp_path, code, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["False 2.5", "[1.0]", "[1.0]"]
    proc = _load_by_path(tmp_path, "", {reward.ENV: '{"require_boxed": 1}'})
    assert proc.returncode != 0 and "CONFAGG_REWARD.require_boxed" in proc.stderr


def test_the_shell_prefix_carries_the_settings_to_the_command():
    # OpenRLHF's job line starts with it; the reward module reads it where it loads.
    s = RewardSettings(require_boxed=False, timeout_s=7.5)
    code = "import os, json; print(os.environ['CONFAGG_REWARD'])"
    out = subprocess.run(["bash", "-c", f"{s.shell_prefix()} {sys.executable} -c \"{code}\""],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    assert RewardSettings.from_mapping(json.loads(out.stdout), "env") == s
