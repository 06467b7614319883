"""LoRA (`training.lora`): the peft config both trainers build from it, and the merge of
trained adapters into their base, so that `results/train/{run}/model` is a full Hugging
Face model (what vLLM evaluation loads) whichever trainer made it.

TRL merges the adapters it holds in memory (`save_model`); OpenRLHF 0.11.2 saves the
adapters only, and its rule then runs `python -m confagg.lora BASE ADAPTER OUT`
(`merge_adapter`)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .config import ConfigError

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"
# What peft's save_pretrained writes for an adapter: none may be left in a merged model.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def lora_config(lora: dict[str, Any]):
    """peft's LoraConfig for a causal LM from the `training.lora` section."""
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora["rank"], lora_alpha=lora["alpha"],
                      lora_dropout=lora["dropout"], target_modules=lora["target_modules"],
                      bias="none")


def check_targets(model, target_modules: str | list[str]) -> None:
    """Every named target must be a linear layer of `model` (peft would fail later with a
    message that does not name the config key)."""
    import torch

    if target_modules == ALL_LINEAR:
        return
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    missing = [t for t in target_modules if t.rsplit(".", 1)[-1] not in linear]
    if missing:
        raise ConfigError(f"config key 'training.lora.target_modules': {missing} name no linear "
                          f"layer of the model (its linear layers: {sorted(linear)})")


def save_model(model, tokenizer, out: str | Path) -> None:
    """Save `model` and `tokenizer` to `out` as a full Hugging Face model, replacing it as a
    whole (written next to it, then renamed); a peft model's adapters are folded into its
    base weights first."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    left = [f for f in ADAPTER_FILES if (tmp / f).exists()]
    if left:
        raise RuntimeError(f"{tmp}: the merged model still holds adapter files {left}")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def merge_adapter(base: str | Path, adapter_dir: str | Path, out: str | Path) -> None:
    """Load `base`, apply the adapters saved in `adapter_dir`, save the merged model to
    `out` with the adapter folder's tokenizer (the base's when it has none), in the base's
    dtype."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (no trained adapter "
                                "was saved there)")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    has_tok = (adapter_dir / "tokenizer_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir if has_tok else base))
    save_model(peft_model, tokenizer, out)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    log.info("merged %s (r=%s, alpha=%s) into %s: %s", adapter_dir, cfg.get("r"),
             cfg.get("lora_alpha"), base, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m confagg.lora", description=merge_adapter.__doc__)
    p.add_argument("base", help="the base model: a folder or a Hub name")
    p.add_argument("adapter", help="the folder peft saved the adapters to")
    p.add_argument("out", help="where the merged model goes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    merge_adapter(a.base, a.adapter, a.out)


if __name__ == "__main__":
    main()
