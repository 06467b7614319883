"""The train stage: GRPO steps of the TRL job (`confagg.train_trl.train`) on the bundled
model, full-parameter or LoRA (`training.lora` of config.yaml), one variant per process
so each peak RSS is its own."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path


def step_timer():
    """A TrainerCallback that records each optimizer step's wall and CPU time (this
    process's threads: on a shared machine CPU time moves far less with the others' load
    than wall time) and the number of trainable parameters."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.trainable = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def on_step_begin(self, args, state, control, **kwargs):
            self._t, self._cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._t)
            self.cpu_seconds.append(time.process_time() - self._cpu)

    return StepTimer()


def stage_train(sz: dict, cfg: dict, workdir: Path, model_path: str, variant: str) -> dict:
    """`train_steps` GRPO steps of `train_prompts` seeded sums (rewards vary within groups,
    so every step has a gradient), the embedded default's settings, on the CPU."""
    from confagg.io import write_jsonl
    from confagg.train_trl import train

    rng = random.Random(0)
    pairs = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(sz["train_prompts"])]
    rows = [{"prompt": f"What is {a} + {b}? Reply with only the number.", "answer": str(a + b)}
            for a, b in pairs]
    data = workdir / "train-prompts.jsonl"
    write_jsonl(data, rows)
    t = copy.deepcopy(cfg["training"])
    t["max_new_tokens"] = sz["train_max_tokens"]
    t["reward"]["timeout_s"] = cfg["grading"]["timeout_s"]
    t["trl"].update(max_steps=sz["train_steps"], save_steps=sz["train_steps"] + 1, use_cpu=True,
                    per_device_batch_size=2 * t["group_size"], gradient_accumulation_steps=1)
    t["lora"]["enabled"] = variant == "lora"
    timer = step_timer()
    run = workdir / f"train-{variant}"
    summary = train(t, model_path=model_path, train_path=str(data), output_dir=str(run / "model"),
                    ckpt_dir=str(run / "ckpt"), log_path=str(run / "log.jsonl"), use_cpu=True,
                    tensorboard_dir=str(run / "tb"), callbacks=[timer])
    steps, cpu = timer.seconds, timer.cpu_seconds
    # The first step also warms up (allocations, kernel choice): timed apart.
    later, later_cpu = (steps[1:], cpu[1:]) if len(steps) > 1 else (steps, cpu)
    return {"figures": {}, "extra": {
        f"train_{variant}_seconds_per_step": sum(later) / len(later),
        f"train_{variant}_cpu_seconds_per_step": sum(later_cpu) / len(later_cpu),
        f"train_{variant}_first_step_seconds": steps[0],
        f"train_{variant}_trainable_params": timer.trainable},
        "raw": {"step_seconds": steps, "step_cpu_seconds": cpu, "summary": summary,
                "lora": t["lora"] if t["lora"]["enabled"] else None}}
