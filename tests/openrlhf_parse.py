"""Run OpenRLHF 0.11.2's `train_ppo_ray` on an argv, on a CPU, up to its first GPU work.

Usage: python openrlhf_parse.py [--real-strategy] OPENRLHF_DIR OUT_JSON -- <argv[1:]...>

The module builds its parser and validates the arguments under `__main__`, then calls
`train(args)`, which builds the strategy, prints the arguments (`strategy.print(args)`),
checks the colocation rules (engines x tensor parallel == the actor's GPUs, among
others) and then creates the vLLM engines. Its top-level imports need Ray, DeepSpeed,
vLLM and CUDA, so those modules are replaced by stubs before it runs; the stub of
`create_vllm_engines` writes the arguments as `train` holds them as JSON and stops.
Everything before, the parser, the post-parse checks of `__main__` and `train`'s own
checks, is OpenRLHF's real code. With --real-strategy, `get_strategy` and the strategy
whose `print` shows the arguments are OpenRLHF's too (DeepSpeed, PEFT and the model
classes stubbed; torch and transformers real: slower).
"""

import json
import runpy
import sys
import types
from types import SimpleNamespace

real_strategy = sys.argv[1] == "--real-strategy"
if real_strategy:
    del sys.argv[1]
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


def create_vllm_engines(*a, **k):
    # The namespace train() got, and the class of the strategy that printed it.
    out = {**to_plain(train_args[0]), "__strategy__": type(strategies[0]).__qualname__}
    with open(out_path, "w") as fh:
        json.dump(out, fh, default=str)
    raise Parsed


def stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class StubStrategy:
    """What train() asks of the strategy before the engines: print the arguments."""

    def __init__(self, args):
        self.args = args

    def print(self, *msg):
        print(*msg)


train_args, strategies = [], []


def get_strategy(args):
    train_args.append(args)
    if real_strategy:
        from openrlhf.utils.utils import get_strategy as real

        strategies.append(real(args))
    else:
        strategies.append(StubStrategy(args))
    return strategies[-1]


class PlacementGroup:
    def ready(self):
        return None


stub("ray", is_initialized=lambda: True, init=lambda **kw: None, get=lambda x: x,
     remote=lambda *a, **k: (lambda f: f))
stub("ray.util")
stub("ray.util.placement_group", placement_group=lambda *a, **k: PlacementGroup())
stub("openrlhf.trainer.ray", create_vllm_engines=create_vllm_engines)
stub("openrlhf.trainer.ray.launcher", RayActorGroup=None, ReferenceModelActor=None,
     RewardModelActor=None)
stub("openrlhf.trainer.ray.ppo_actor", PolicyModelActor=None)
stub("openrlhf.trainer.ray.ppo_critic", CriticModelActor=None)
# openrlhf.utils: a package whose __init__ (DeepSpeed, CUDA, math parsers) does not run;
# its submodules (config.py's hierarchize, utils.py's get_strategy) load from the real folder.
utils = stub("openrlhf.utils", get_strategy=get_strategy)
utils.__path__ = [f"{openrlhf_dir}/openrlhf/utils"]
if real_strategy:
    # transformers probes for DeepSpeed while importing: import it before the stub exists.
    import transformers.trainer  # noqa: F401

    for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero"):
        stub(name)
    stub("deepspeed.runtime.zero.partition_parameters", ZeroParamStatus=None)
    stub("peft", PeftModel=None, get_peft_model_state_dict=None)
    stub("torchdata")
    stub("torchdata.stateful_dataloader", StatefulDataLoader=None)
    stub("openrlhf.models", Actor=None)
    stub("openrlhf.models.ring_attn_utils", get_ring_attn_group=None, set_ring_attn_group=None)

sys.argv = ["train_ppo_ray", *argv]
try:
    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
except Parsed:
    sys.exit(0)
sys.exit("train_ppo_ray finished without creating vLLM engines: the stubs are out of date")
