"""The training-reward probes of docs/study.md: GRPO on the study's curated rows through
the rule's own code (confagg.train_trl.train), one setting per call, outside Snakemake.

    .venv/bin/python docs/study/grpo_probe.py --name C --lr 1e-4 --tokens 16 --steps 40

It reads `<workdir>/results/curate/smollm2-135m/arith_train/train.jsonl` and the bundled
model of a study working directory (`make study` makes both; default
results/study-arith), applies the options over the study recipe's training settings,
and writes `<out>/<name>/log.jsonl` (one line per step, as train_log.jsonl) and a line to
`<out>/results.jsonl`. `--easy S` redraws the rows so that a share S is easy sets (all
easy sets, hard sets drawn with seed 0): a mix curation cannot make when the solver is
weak, since it keeps all hard sets. `--threads 1` lets two probes share two cores."""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--workdir", default=str(REPO / "results" / "study-arith"))
    ap.add_argument("--out", default="/tmp/grpo_probe")
    ap.add_argument("--k", default="1,2", help="set sizes to train on")
    ap.add_argument("--noconf", action="store_true", help="AggLM prompts (no confidence)")
    ap.add_argument("--easy", type=float, default=-1, help="share of easy sets (-1: as curated)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--kl", type=float, default=0.0)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full parameters)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    from confagg import train_trl
    from confagg.config import load_config

    os.chdir(REPO)
    cfg = load_config("config.yaml", "profiles/local/embedded.yaml", "profiles/study/study.yaml")
    t = dict(cfg["training"])
    t.update(group_size=a.group, kl_coef=a.kl, learning_rate=a.lr, max_new_tokens=a.tokens)
    t["reward"] = {**t["reward"], "timeout_s": cfg["grading"]["timeout_s"]}
    t["trl"] = {**t["trl"], "max_steps": a.steps, "per_device_batch_size": a.batch,
                "save_steps": 10**6}
    t["lora"] = {**t["lora"], "enabled": bool(a.lora)}
    if a.lora:
        t["lora"].update(rank=a.lora, alpha=2 * a.lora, dropout=0.0)

    wd = Path(a.workdir)
    rows = [json.loads(line) for line in
            open(wd / "results/curate/smollm2-135m/arith_train/train.jsonl")]
    ks = {int(x) for x in a.k.split(",")}
    rows = [r for r in rows if r["k"] in ks]
    if a.easy >= 0:
        rng = random.Random(0)
        easy = [r for r in rows if r["difficulty"] == "easy"]
        hard = [r for r in rows if r["difficulty"] == "hard"]
        n_hard = min(len(hard), int(len(easy) * (1 - a.easy) / a.easy)) if a.easy > 0 else len(hard)
        n_easy = min(len(easy), round(n_hard * a.easy / (1 - a.easy))) if a.easy < 1 else len(easy)
        rows = rng.sample(easy, n_easy) + rng.sample(hard, n_hard)
    out = Path(a.out) / a.name
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt_noconf" if a.noconf else "prompt"],
                                "answer": r["answer"]}) + "\n")
    t0 = time.time()
    train_trl.train(t, model_path=str(wd / "resources/models/smollm2-135m"),
                    train_path=str(out / "train.jsonl"), output_dir=str(out / "model"),
                    ckpt_dir=str(out / "ckpt"), log_path=str(out / "log.jsonl"), use_cpu=True)
    rewards = [json.loads(line)["reward"] for line in open(out / "log.jsonl")]
    result = {**vars(a), "rows": len(rows), "easy_rows": sum(r["difficulty"] == "easy" for r in rows),
              "secs": round(time.time() - t0), "rewards": [round(x, 3) for x in rewards]}
    print(json.dumps(result))
    with open(Path(a.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
