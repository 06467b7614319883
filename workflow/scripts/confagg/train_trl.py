"""GRPO with TRL on one machine (CPU or one GPU): same data, reward and GRPO settings
as the OpenRLHF path. Checkpoints go to a progress folder outside the rule's output,
so a killed run resumes from its last checkpoint (checkpoints made with other settings
or data are discarded first); the final model and tokenizer are saved with
save_pretrained. With `lora.enabled` peft's adapters are trained (GRPOTrainer's
`peft_config`; the reference is the base with the adapters switched off, so no second
copy of the model is held) and merged into the base before saving, so the output is a
full model either way. Each logged step is appended to train_log.jsonl as it happens and to
TensorBoard (`report_to` tensorboard)."""

from __future__ import annotations

import hashlib
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


def checkpoint_fingerprint(cfg: dict[str, Any], *, model_path: str, train_path: str,
                           use_cpu: bool) -> str:
    """What a run's checkpoints depend on: the settings (but `trl.max_steps`, which a
    resumed run may raise, `trl.save_steps` and `trl.max_ckpt_num`), the base model and
    the training rows."""
    settings = json.loads(json.dumps(cfg))
    for key in ("max_steps", "save_steps", "max_ckpt_num"):
        settings.get("trl", {}).pop(key, None)
    h = hashlib.sha256(json.dumps({"settings": settings, "model": str(model_path),
                                   "use_cpu": use_cpu}, sort_keys=True).encode())
    h.update(Path(train_path).read_bytes())
    return h.hexdigest()[:16]


def keep_matching_checkpoints(ckpt_dir: str | Path, fingerprint: str) -> None:
    """Empty `ckpt_dir` unless its checkpoints were made with this fingerprint: a changed
    setting or curated set reruns the job, which must train anew, not resume a stale run."""
    d = Path(ckpt_dir)
    meta = d / "fingerprint.json"
    try:
        old = json.loads(meta.read_text()).get("fingerprint")
    except (OSError, ValueError):
        old = None
    if old != fingerprint and any(d.glob("checkpoint-*")):
        log.info("settings or training data changed since %s was saved: starting over", d)
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta, json.dumps({"fingerprint": fingerprint}) + "\n")


def step_logger(log_path: str | Path):
    """A TrainerCallback that keeps `log_path` equal to the trainer's reward logs, one
    JSON line per step, written as each step is logged (a resumed run first rewrites the
    lines its checkpoint restored)."""
    from transformers import TrainerCallback

    path = Path(log_path)

    class StepLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                atomic_write_text(path, "".join(json.dumps(h) + "\n"
                                                for h in state.log_history if "reward" in h))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "reward" in logs:
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({**logs, "step": state.global_step}) + "\n")

    return StepLog()


def grpo_args(cfg: dict[str, Any], *, ckpt_dir: str, use_cpu: bool):
    """TRL's GRPOConfig for `training`; `lr_schedule` null keeps TRL's (linear decay to 0)."""
    from trl import GRPOConfig

    t = cfg["trl"]
    schedule = {"lr_scheduler_type": cfg["lr_schedule"]} if cfg.get("lr_schedule") else {}
    return GRPOConfig(
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
        save_total_limit=t["max_ckpt_num"],
        logging_steps=1,
        seed=cfg["seed"],
        use_cpu=use_cpu,
        bf16=not use_cpu,
        report_to=["tensorboard"],
        save_only_model=False,
        disable_tqdm=False,
        **schedule,
    )


def train(cfg: dict[str, Any], *, model_path: str, train_path: str,
          output_dir: str, ckpt_dir: str, log_path: str, use_cpu: bool,
          tensorboard_dir: str | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Run GRPOTrainer for `trl.max_steps` steps; returns a summary of what it logged.
    TensorBoard events go to `tensorboard_dir` (default: under `ckpt_dir`); `callbacks`
    run after the step logger."""
    import torch
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import TensorBoardCallback
    from trl import GRPOTrainer

    from .lora import check_targets, lora_config, save_model
    from .reward import configure, trl_reward

    configure(**cfg["reward"])  # training.reward (+ grading.timeout_s from the rule)

    train_ds = Dataset.from_list(load_prompts(train_path))
    keep_matching_checkpoints(ckpt_dir, checkpoint_fingerprint(
        cfg, model_path=model_path, train_path=train_path, use_cpu=use_cpu))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32 if use_cpu else torch.bfloat16)
    peft_config = None
    if cfg["lora"]["enabled"]:
        check_targets(model, cfg["lora"]["target_modules"])
        peft_config = lora_config(cfg["lora"])
    args = grpo_args(cfg, ckpt_dir=ckpt_dir, use_cpu=use_cpu)
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward, args=args,
                          train_dataset=train_ds, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[step_logger(log_path), *(callbacks or [])])
    if peft_config is not None:
        n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        log.info("LoRA r=%d alpha=%d on %s: %d trainable parameters", peft_config.r,
                 peft_config.lora_alpha, cfg["lora"]["target_modules"], n)
    # report_to's callback writes under output_dir/runs; point it at the run's folder.
    tb_dir = Path(tensorboard_dir) if tensorboard_dir else Path(ckpt_dir) / "tensorboard"
    tb_dir.mkdir(parents=True, exist_ok=True)
    trainer.pop_callback(TensorBoardCallback)
    trainer.add_callback(TensorBoardCallback(SummaryWriter(log_dir=str(tb_dir))))
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    save_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    atomic_write_text(log_path, "".join(json.dumps(h) + "\n" for h in history))
    return {"steps": trainer.state.global_step, "resumed_from": resume,
            "mean_reward": (sum(h["reward"] for h in history) / len(history)) if history else None}
