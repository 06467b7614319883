"""Parse an argv with OpenRLHF 0.11.2's own `train_ppo_ray` argument parser, on a CPU.

Usage: python openrlhf_parse.py OPENRLHF_DIR OUT_JSON -- <the command's argv[1:]...>

The module builds its parser and validates the arguments under `__main__`, then calls
`train(args)`. Its top-level imports need Ray, DeepSpeed, vLLM and CUDA, so those
modules are replaced by stubs before it runs; the stub of `get_strategy` (the first
call inside `train` once Ray reports itself initialized) writes the parsed, validated
arguments as JSON and stops. Everything between, the parser and OpenRLHF's own
checks, is OpenRLHF's real code.
"""

import json
import runpy
import sys
import types
from types import SimpleNamespace

openrlhf_dir, out_path = sys.argv[1], sys.argv[2]
argv = sys.argv[sys.argv.index("--") + 1:]
sys.path.insert(0, openrlhf_dir)


class Parsed(Exception):
    pass


def to_plain(x):
    if isinstance(x, SimpleNamespace):
        return {k: to_plain(v) for k, v in vars(x).items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def get_strategy(args):
    with open(out_path, "w") as fh:
        json.dump(to_plain(args), fh, default=str)
    raise Parsed


def stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


stub("ray", is_initialized=lambda: True, init=lambda **kw: None, get=lambda x: x,
     remote=lambda *a, **k: (lambda f: f))
stub("ray.util")
stub("ray.util.placement_group", placement_group=lambda *a, **k: None)
stub("openrlhf.trainer.ray", create_vllm_engines=None)
stub("openrlhf.trainer.ray.launcher", RayActorGroup=None, ReferenceModelActor=None,
     RewardModelActor=None)
stub("openrlhf.trainer.ray.ppo_actor", PolicyModelActor=None)
stub("openrlhf.trainer.ray.ppo_critic", CriticModelActor=None)
# openrlhf.utils: a package whose __init__ (DeepSpeed, CUDA) does not run; its
# submodule config.py (hierarchize) still imports from the real folder.
utils = stub("openrlhf.utils", get_strategy=get_strategy)
utils.__path__ = [f"{openrlhf_dir}/openrlhf/utils"]

sys.argv = ["train_ppo_ray", *argv]
try:
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
except Parsed:
    sys.exit(0)
sys.exit("train_ppo_ray finished without reaching train(): the stubs are out of date")
