"""The untrained aggregator's reward on the training prompts, with the confidence shown
and without it: the same drawn rows of a study working directory, the prompts of the
two runs (`confagg-grpo`, `agglm-grpo`), sampled as GRPO samples its groups (the study
recipe's `training.temperature`, `max_new_tokens` and `group_size`, top_p 1) on the
recipe's vLLM settings, and scored by the reward function itself. It says how much a trainable signal each
run starts from.

    OMP_NUM_THREADS=1 .venv/bin/python docs/study/base_reward.py results/study-arith --rows 160

One OpenMP thread: vLLM's CPU worker is far slower with more (docs/architecture.md).
"""

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

RUNS = {"with confidence": "confagg-grpo", "without (AggLM)": "agglm-grpo"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--rows", type=int, default=160, help="rows drawn, half easy, seeded")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from confagg.config import load_config
    from confagg.generation import chat_prompts, make_engine
    from confagg.io import read_jsonl
    from confagg.reward import configure, score_response
    from vllm import SamplingParams

    res = args.workdir / "results"
    prompts = {label: read_jsonl(res / "train" / run / "prompts" / "train.jsonl")
               for label, run in RUNS.items()}
    a, b = prompts.values()
    keys = [(r["problem_id"], tuple(r["candidate_ids"])) for r in a]
    if keys != [(r["problem_id"], tuple(r["candidate_ids"])) for r in b]:
        sys.exit("the two runs drew different rows: compare runs of one working directory")
    rng = random.Random(args.seed)
    by_kind = {kind: [i for i, r in enumerate(a) if r["difficulty"] == kind]
               for kind in ("easy", "hard")}
    chosen = sorted(i for idx in by_kind.values()
                    for i in rng.sample(idx, min(len(idx), args.rows // 2)))

    cfg = load_config(REPO / "config.yaml", REPO / "profiles/local/embedded.yaml",
                      REPO / "profiles/study/study.yaml")
    t = cfg["training"]
    configure(require_boxed=t["reward"]["require_boxed"])
    llm = make_engine(str(args.workdir / "resources" / "models" / "smollm2-135m"), cfg["vllm"],
                      seed=args.seed)
    params = SamplingParams(n=t["group_size"], temperature=t["temperature"], top_p=1.0,
                            max_tokens=t["max_new_tokens"])
    for label, rows in prompts.items():
        texts = chat_prompts(llm.get_tokenizer(), [rows[i]["prompt"] for i in chosen], None, {})
        outs = llm.generate(texts, params, use_tqdm=False)
        stats = {"all": [], "easy": [], "hard": []}
        varied = 0
        for i, out in zip(chosen, outs):
            rewards = [score_response(c.text, rows[i]["answer"])[0] for c in out.outputs]
            varied += len(set(rewards)) > 1
            stats["all"] += rewards
            stats[rows[i]["difficulty"]] += rewards
        line = {k: round(sum(v) / len(v), 3) for k, v in stats.items() if v}
        print(json.dumps({"prompts": label, "rows": len(chosen), "mean_reward": line,
                          "groups_with_a_gradient": round(varied / len(chosen), 3)}))


if __name__ == "__main__":
    main()
