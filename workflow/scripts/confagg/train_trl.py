"""GRPO with TRL on one machine (CPU or one GPU): same data, reward and GRPO settings
as the OpenRLHF path. Checkpoints go to a progress folder outside the rule's output,
so a killed run resumes from its last checkpoint; the final model and tokenizer are
saved with save_pretrained."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .io import DataError, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)


def load_prompts(path: str) -> list[dict[str, Any]]:
    """train.jsonl rows as TRL conversational prompts (TRL applies the chat template)."""
    rows = read_jsonl(path)
    if not rows:
        raise DataError(path, "no training rows")
    out = []
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "answer"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise DataError(path, f"{key} must be a non-empty string", row=i, field=key)
        out.append({"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]})
    return out


def _complete(ckpt: Path) -> bool:
    """Trainer writes trainer_state.json last: a checkpoint killed while it was being
    saved lacks it, or holds it cut short."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        log.warning("skipping %s: saved only in part", ckpt)
        return False
    return True


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The newest complete checkpoint in `ckpt_dir`, or None."""
    ckpts = sorted(Path(ckpt_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    done = [p for p in ckpts if _complete(p)]
    return str(done[-1]) if done else None


def train(cfg: dict[str, Any], *, model_path: str, train_path: str,
          output_dir: str, ckpt_dir: str, log_path: str, use_cpu: bool) -> dict[str, Any]:
    """Run GRPOTrainer for `trl.max_steps` steps; returns a summary of what it logged."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from .reward import trl_reward

    t = cfg["trl"]
    train_ds = Dataset.from_list(load_prompts(train_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32 if use_cpu else torch.bfloat16)
    args = GRPOConfig(
        output_dir=str(ckpt_dir),
        num_generations=cfg["group_size"],
        max_completion_length=cfg["max_new_tokens"],
        temperature=cfg["temperature"],
        beta=cfg["kl_coef"],
        learning_rate=cfg["learning_rate"],
        per_device_train_batch_size=t["per_device_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        max_steps=t["max_steps"],
        save_steps=t["save_steps"],
        logging_steps=1,
        seed=cfg["seed"],
        use_cpu=use_cpu,
        bf16=not use_cpu,
        report_to=[],
        save_only_model=False,
        disable_tqdm=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward, args=args,
                          train_dataset=train_ds, processing_class=tokenizer)
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    tmp = Path(output_dir).with_name(f".{Path(output_dir).name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if Path(output_dir).exists():
        shutil.rmtree(output_dir)
    tmp.rename(output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    atomic_write_text(log_path, "".join(json.dumps(h) + "\n" for h in history))
    return {"steps": trainer.state.global_step, "resumed_from": resume,
            "mean_reward": (sum(h["reward"] for h in history) / len(history)) if history else None}
