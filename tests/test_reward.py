"""The GRPO reward (OpenRLHF contract and TRL wrapper) with real math-verify."""

from __future__ import annotations

import time

import torch
from confagg.reward import response_part, reward_func, trl_reward

PROMPT = ("<|im_start|>user\nProblem:\nWhat is 6 * 7?\n\nCandidate solution 1 (confidence: "
          "80/100):\nIt is \\boxed{42}\n<|im_end|>\n<|im_start|>assistant\n")


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


def test_no_answer_scores_zero_and_is_logged():
    reward, logs = one("I am not sure.")
    assert reward == 0.0 and logs["reward_no_answer"] == 1.0


def test_answer_only_in_the_prompt_earns_nothing():
    # The candidate in the prompt says 42; the response says nothing numeric.
    assert one("Let me think again about this.")[0] == 0.0
    assert response_part(PROMPT + "abc<|im_end|>", PROMPT) == "abc"
    # A prompt that is not inside the query: nothing is graded, reward 0.
    out = reward_func(["\\boxed{42}"], ["some other prompt"], ["42"])
    assert out["rewards"].item() == 0.0 and out["extra_logs"]["reward_error"].item() == 1.0


def test_pathological_expression_returns_within_timeout():
    start = time.monotonic()
    reward, logs = one("\\boxed{10^{10^{10^{10^{10^{10}}}}}}", label="1")
    assert reward == 0.0 and logs["reward_timeout"] == 1.0
    assert time.monotonic() - start < 5.0 + 10.0


def test_non_ascii_and_bad_types_never_raise():
    assert one("答案是 \\boxed{42} ✓")[0] == 1.0
    out = reward_func([None], [PROMPT], ["42"])
    assert out["rewards"].tolist() == [0.0]


def test_trl_wrapper_grades_completions():
    completions = [[{"role": "assistant", "content": "\\boxed{42}"}],
                   [{"role": "assistant", "content": "\\boxed{7}"}], "plain 42"]
    assert trl_reward(completions, answer=["42", "42", "42"]) == [1.0, 0.0, 1.0]


def test_loads_by_path_the_way_openrlhf_does(tmp_path):
    """OpenRLHF imports the file with spec_from_file_location as a top-level module."""
    import subprocess
    import sys

    from confagg.train_openrlhf import REWARD_FILE

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('reward_func', {str(REWARD_FILE)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "out = mod.reward_func(['Q: 2+2? A: \\\\boxed{4}'], ['Q: 2+2? A:'], ['4'])\n"
        "print(out['rewards'].tolist())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[1.0]"
