"""LoRA (confagg.lora): the merge of trained adapters into a full model, as OpenRLHF's
rule runs it (the real command line, real peft and transformers, a tiny Llama), and the
target check that names the config key."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import torch
from confagg.config import ConfigError, load_config
from confagg.lora import ADAPTER_FILES, check_targets, lora_config, merge_adapter
from confagg.train_openrlhf import adapter_dir, merge_command
from conftest import REPO
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = ["<unk>", "<s>", "</s>", "what", "is", "one", "plus", "two", "three"]


def tiny_llama(path):
    """A 2-layer Llama with a word-level tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def training_cfg(**lora):
    cfg = copy.deepcopy(load_config(REPO / "config.yaml")["training"])
    cfg["lora"].update(enabled=True, **lora)
    return cfg


def test_openrlhf_adapters_merge_into_a_full_model(tmp_path):
    from peft import get_peft_model

    base_dir, ckpt = tmp_path / "base", tmp_path / "ckpt"
    model, tokenizer = tiny_llama(base_dir)
    cfg = training_cfg(rank=4, alpha=8, dropout=0.0)
    peft_model = get_peft_model(model, lora_config(cfg["lora"]))
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give it what training would
            p.data.normal_(0, 0.1)
    peft_model.eval()
    ids = tokenizer("what is one plus two", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_model(ids).logits
    # Where OpenRLHF 0.11.2 saves a LoRA run: the adapters and the tokenizer.
    peft_model.save_pretrained(adapter_dir(ckpt))
    tokenizer.save_pretrained(adapter_dir(ckpt))

    out = tmp_path / "results" / "model"
    argv = merge_command(cfg, model_path=str(base_dir), ckpt_dir=str(ckpt), output_dir=str(out),
                         python=str(REPO / ".venv" / "bin" / "python"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert not [f for f in ADAPTER_FILES if (out / f).exists()]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    base, merged = load_file(base_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(merged) == set(base)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    targets = tuple(f"{m}.weight" for m in cfg["lora"]["target_modules"])
    # Every adapted projection of both layers changed, nothing else did.
    assert changed == {k for k in base if k.endswith(targets)} and len(changed) == 2 * 7
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = reloaded(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert (out / "tokenizer.json").exists()


def test_merge_without_an_adapter_names_the_folder(tmp_path):
    tiny_llama(tmp_path / "base")
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FileNotFoundError, match=f"{adapter_dir(ckpt)}: no adapter_config.json"):
        merge_adapter(tmp_path / "base", adapter_dir(ckpt), tmp_path / "model")
    assert not (tmp_path / "model").exists()
    cfg = training_cfg()
    assert merge_command({**cfg, "lora": {**cfg["lora"], "enabled": False}}, model_path="m",
                         ckpt_dir="c", output_dir="o") is None


def test_targets_must_be_linear_layers_of_the_model(tmp_path):
    model, _ = tiny_llama(tmp_path / "base")
    check_targets(model, ["q_proj", "down_proj"])
    check_targets(model, "all-linear")
    with pytest.raises(ConfigError, match=r"^config key 'training.lora.target_modules': "
                                          r"\['query_key_value'\] name no linear layer"):
        check_targets(model, ["q_proj", "query_key_value"])
    # peft reads "all-linear" as every linear layer but the output head.
    from peft import get_peft_model

    wrapped = get_peft_model(model, lora_config(training_cfg(target_modules="all-linear")["lora"]))
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in wrapped.named_parameters()
               if ".lora_A." in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}
