"""Training curves from TRL's train_log.jsonl and from OpenRLHF's TensorBoard events
(written by OpenRLHF 0.11.2's own TensorboardLogger)."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
from confagg.io import DataError
from confagg.train_curves import from_jsonl, from_tensorboard, plot
from conftest import REPO

OPENRLHF = REPO / ".venv" / "openrlhf-0.11.2"


def png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    return data


def test_trl_log_gives_all_four_curves(tmp_path):
    rows = [{"step": s, "reward": 0.1 * s, "kl": 0.01 * s, "completions/mean_length": 20.0 + s,
             "grad_norm": 1.0 / s, "frac_reward_zero_std": 0.5} for s in (1, 2, 3)]
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shown = plot(from_jsonl(log), tmp_path / "c.png", "t")
    assert shown == {"reward": "reward", "KL": "kl",
                     "response length (tokens)": "completions/mean_length",
                     "grad norm": "grad_norm"}
    png(tmp_path / "c.png")
    # A metric the log lacks is drawn as "not logged", not an error.
    shown = plot([{k: v for k, v in r.items() if k != "kl"} for r in rows], tmp_path / "d.png", "t")
    assert shown["KL"] is None


def test_a_row_without_a_step_is_named(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "reward": 0}\n{"reward": 1}\n')
    with pytest.raises(DataError, match=r"train_log.jsonl, row 2, field 'step'"):
        from_jsonl(log)


def test_openrlhf_tensorboard_events(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "openrlhf_logging_utils", OPENRLHF / "openrlhf" / "utils" / "logging_utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = SimpleNamespace(logger=SimpleNamespace(tensorboard_dir=str(tmp_path / "tb"),
                                                  wandb=SimpleNamespace(run_name="r")))
    tb = mod.TensorboardLogger(args)
    for step in (1, 2, 3, 4):  # keys as OpenRLHF's PPOTrainer logs them
        tb.log_train(step, {"rollout/reward_mean": 0.2 * step, "kl": 0.001 * step,
                            "rollout/response_length_mean": 100.0 + step,
                            "actor_grad_norm": 0.5, "policy_loss": -0.1,
                            "generated_samples": ["text", 1.0]})
    tb.close()
    rows = from_tensorboard(tmp_path / "tb")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["rollout/reward_mean"] == pytest.approx(0.6)
    shown = plot(rows, tmp_path / "c.png", "t")
    assert shown == {"reward": "rollout/reward_mean", "KL": "kl",
                     "response length (tokens)": "rollout/response_length_mean",
                     "grad norm": "actor_grad_norm"}
    png(tmp_path / "c.png")
    with pytest.raises(DataError, match="no TensorBoard event files"):
        from_tensorboard(tmp_path / "empty")
