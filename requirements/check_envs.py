"""Check that every environment `make setup` builds resolves, with pip's own resolver.

    python requirements/check_envs.py [NAME ...]    check (default: every environment)
    python requirements/check_envs.py --lock NAME   rewrite NAME's constraints file

Each check is `pip install --dry-run --ignore-installed --report` of the environment's
requirement files under its constraints file: pip resolves and stops before installing.
`--use-feature=fast-deps` reads each wheel's metadata with HTTP range requests, so no
wheel is downloaded (the CUDA ones are gigabytes); source-only packages (deepspeed,
flash-attn, a few small ones) are downloaded and their metadata built, as pip does.
The GPU environments resolve against the package index only, as on a GPU node: this
machine's pip configuration is left out, since its local wheel folder holds a
torch 2.13.0+cpu that pip would take for torch==2.13.0.

A check also fails when the constraints file does not pin every resolved package at
the version resolved (the environment is not locked), and for the OpenRLHF environment
when flash-attn or OpenRLHF's own requirements are not met by what resolved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Installed after the environment's requirements, in this order (Makefile, setup-openrlhf).
FLASH_ATTN = "flash-attn==2.8.3"
OPENRLHF = "openrlhf[vllm]==0.11.2"


@dataclass(frozen=True)
class Env:
    name: str
    requirements: tuple[str, ...]
    constraints: str
    index_only: bool  # resolve without this machine's pip configuration
    nodeps: tuple[str, ...] = ()  # files installed with --no-deps
    then: tuple[str, ...] = field(default=())  # installed after, checked against the result


ENVS = {
    "cpu": Env("cpu", ("cpu.txt", "common.txt"), "constraints-cpu.txt", False, ("nodeps.txt",)),
    "gpu": Env("gpu", ("gpu.txt", "common.txt"), "constraints-gpu.txt", True, ("nodeps.txt",)),
    "openrlhf": Env("openrlhf", ("openrlhf.txt",), "constraints-openrlhf.txt", True,
                    then=(FLASH_ATTN, OPENRLHF)),
}


class CheckError(Exception):
    pass


def read_pins(path: Path) -> dict[str, tuple[str, str]]:
    """{canonical name: (version, line)} of a constraints file's `name==version` lines."""
    pins: dict[str, tuple[str, str]] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if not m:
            raise CheckError(f"{path.relative_to(REPO)} line {n}: '{raw}' is not name==version")
        name = canonicalize_name(m.group(1))
        if name in pins:
            raise CheckError(f"{path.relative_to(REPO)} line {n}: {m.group(1)} is pinned twice")
        pins[name] = (m.group(3), line)
    return pins


def pip_env(index_only: bool) -> dict[str, str]:
    env = dict(os.environ)
    if index_only:
        env["PIP_CONFIG_FILE"] = os.devnull
        for key in ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
            env.pop(key, None)
    return env


def pip_report(args: list[str], *, index_only: bool, what: str, extra_env=None) -> dict:
    """Run `pip install --dry-run --report` with args; the report, or CheckError."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--use-feature=fast-deps", "--report", str(report), *args]
        env = pip_env(index_only) | (extra_env or {})
        proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
            raise CheckError(f"{what}: pip could not resolve it:\n{tail}")
        return json.loads(report.read_text())


def resolved(report: dict) -> dict[str, dict]:
    """{canonical name: metadata} of what a report would install."""
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in report["install"]}


def resolve_env(env: Env, constraints: Path | None) -> dict[str, dict]:
    args = [a for f in env.requirements for a in ("-r", f)]
    if constraints is not None:
        args += ["-c", str(constraints)]
    what = f"environment '{env.name}' ({', '.join('requirements/' + f for f in env.requirements)})"
    return resolved(pip_report(args, index_only=env.index_only, what=what))


def check_lock(env: Env, got: dict[str, dict]) -> None:
    path = HERE / env.constraints
    pins = read_pins(path)
    bad = []
    for name, meta in sorted(got.items()):
        if name not in pins:
            bad.append(f"{meta['name']}=={meta['version']} resolved but not pinned")
        elif Version(pins[name][0]) != Version(meta["version"]):
            bad.append(f"{meta['name']} resolved {meta['version']}, pinned {pins[name][0]}")
    if bad:
        raise CheckError(f"requirements/{env.constraints} does not lock environment "
                         f"'{env.name}' (rewrite it: python requirements/check_envs.py "
                         f"--lock {env.name}):\n  " + "\n  ".join(bad))


def satisfied(req: Requirement, got: dict[str, dict], extras: set[str], who: str) -> str | None:
    """Why req (a requirement of `who`) is not met by the resolved set, or None."""
    env = {"extra": ""}
    if req.marker is not None and not any(
            req.marker.evaluate(env | {"extra": e}) for e in (extras or {""})):
        return None
    meta = got.get(canonicalize_name(req.name))
    if meta is None:
        return f"{who} requires {req}, which is not in the environment"
    if not req.specifier.contains(meta["version"], prereleases=True):
        return f"{who} requires {req}, the environment has {meta['version']}"
    return None


def check_then(env: Env, got: dict[str, dict]) -> dict[str, dict]:
    """The packages installed after the environment (flash-attn without build
    isolation, then OpenRLHF): each one's requirements must be met by what resolved
    before it. Returns the environment with them added."""
    got = dict(got)
    for spec in env.then:
        req = Requirement(spec)
        with tempfile.TemporaryDirectory() as tmp:
            args, extra_env = ["--no-deps", spec], None
            if canonicalize_name(req.name) == "flash-attn":
                # Built as make setup builds it: after torch, without build isolation.
                # Only its metadata is built here, with this interpreter's torch and no
                # CUDA compile; its setup.py imports `wheel`, which .venv lacks.
                wheel = read_pins(HERE / env.constraints)["wheel"][0]
                subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                "--target", tmp, f"wheel=={wheel}"], check=True,
                               capture_output=True, env=pip_env(False))
                args.insert(0, "--no-build-isolation")
                extra_env = {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE", "PYTHONPATH": tmp}
            meta = resolved(pip_report(args, index_only=env.index_only, what=spec,
                                       extra_env=extra_env))[canonicalize_name(req.name)]
        problems = [p for r in meta.get("requires_dist") or []
                    if (p := satisfied(Requirement(r), got, set(req.extras), spec))]
        if problems:
            raise CheckError(f"environment '{env.name}' does not meet {spec}:\n  "
                             + "\n  ".join(problems))
        got[canonicalize_name(req.name)] = meta
    return got


def check_nodeps(env: Env) -> None:
    for f in env.nodeps:
        pip_report(["--no-deps", "-r", f], index_only=env.index_only,
                   what=f"requirements/{f} (--no-deps)")


def check(env: Env) -> int:
    start = time.monotonic()
    got = resolve_env(env, HERE / env.constraints)
    check_nodeps(env)
    got = check_then(env, got)
    check_lock(env, got)
    print(f"{env.name}: {len(got)} packages resolve under requirements/{env.constraints} "
          f"({time.monotonic() - start:.0f} s)", flush=True)
    return len(got)


def lock(env: Env, seed: Path | None) -> None:
    """Write env's constraints file: every resolved package pinned. `seed` (a constraints
    file) steers versions shared with another lock; default: the current lock."""
    path = HERE / env.constraints
    if seed is None and path.exists():
        seed = path
    got = resolve_env(env, seed)
    header = [line for line in (path.read_text().splitlines() if path.exists() else [])
              if line.startswith("#")]
    # Constraints take no extras: `openrlhf[vllm]==0.11.2` is pinned as openrlhf==0.11.2.
    then = [Requirement(s) for s in env.then]
    pins = sorted([f"{m['name']}=={m['version']}" for m in got.values()]
                  + [f"{r.name}{r.specifier}" for r in then], key=str.lower)
    path.write_text("\n".join(header + pins) + "\n")
    print(f"wrote requirements/{env.constraints}: {len(pins)} pins")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("names", nargs="*", help=f"environments (default: all of {list(ENVS)})")
    ap.add_argument("--lock", metavar="NAME", help="rewrite NAME's constraints file")
    ap.add_argument("--seed", type=Path, help="with --lock: constraints steering the versions")
    a = ap.parse_args(argv)
    try:
        if a.lock:
            if a.lock not in ENVS:
                ap.error(f"unknown environment '{a.lock}' (known: {', '.join(ENVS)})")
            lock(ENVS[a.lock], a.seed)
            return 0
        unknown = [n for n in a.names if n not in ENVS]
        if unknown:
            ap.error(f"unknown environment(s) {unknown} (known: {', '.join(ENVS)})")
        names = a.names or list(ENVS)
        # pip mostly waits on the network: the environments are checked side by side.
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {n: pool.submit(check, ENVS[n]) for n in names}
        errors = [str(e) for f in futures.values() if (e := f.exception())]
        for e in (f.exception() for f in futures.values()):
            if e is not None and not isinstance(e, CheckError):
                raise e
    except CheckError as e:
        errors = [str(e)]
    if errors:
        print("\n".join(f"check_envs: {e}" for e in errors), file=sys.stderr)
        return 1
    print("every environment resolves and is locked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
