"""SIGKILL the real rules mid-run, rerun, and compare with a run never interrupted.

Through Snakemake (profiles/local, the test config with `generation.batch_problems: 1`
so that each problem is saved on its own): the whole Snakemake process group is
killed, first while a generate job runs (after at least one problem was saved under
results/.progress), then while train_trl runs (after checkpoint-1 was saved). The
rerun must not generate the finished problems again, training must resume from
checkpoint-1, and the outputs must match the session pipeline's uninterrupted run
(same config, default batch_problems) in keys and counts.

Jobs die with their Snakemake (confagg.smk): SIGKILL to Snakemake's PID alone (not its
group) while grade_samples runs stops that job and its processes and publishes nothing;
SIGKILL to the job's own process alone fails the job in Snakemake, publishes nothing,
and a rerun completes. The mechanism itself is shown on bare processes too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (
    BASE_CONFIGS,
    REPO,
    VLLM_LOCK,
    _FileLock,
    run_snakemake,
    snakemake_command,
    snakemake_env,
)
from safetensors import safe_open

MODEL = "smollm2-135m"
GEN = f"results/generate/{MODEL}/arith_train"
RUN = "confagg-grpo"
TRAIN_TARGET = f"results/train/{RUN}/model"
CKPT = f"results/.progress/train/{RUN}/ckpt"
PROBLEMS_PER_SHARD = 3  # tests/test_config.yaml: 6 problems, 2 shards


def start(workdir: Path, configs: list, *targets: str) -> subprocess.Popen:
    """Snakemake in its own process group (so that one killpg reaches every job)."""
    return subprocess.Popen(snakemake_command(workdir, *targets, configfiles=configs),
                            cwd=REPO, env=snakemake_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 900):
    """Poll `ready()` until it returns a true value, then SIGKILL the whole group."""
    deadline = time.monotonic() + timeout
    while not (got := ready()):
        assert proc.poll() is None, f"snakemake ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return got


def unlock(workdir: Path, configs: list):
    """`--unlock` after a killed Snakemake, while the caller holds the vLLM lock."""
    run_snakemake(workdir, "--unlock", configfiles=configs, profile=None, lock=False)


def saved_progress(workdir: Path):
    """{shard: {(problem_id, sample_idx): text}} of the problems saved so far."""
    out = {}
    for shard in range(2):
        folder = workdir / f"results/.progress/generate/{MODEL}/arith_train/shard{shard}"
        rows = {}
        for part in sorted(folder.glob("part-*.parquet")):
            try:
                for r in pq.read_table(part).to_pylist():
                    rows[(r["problem_id"], r["sample_idx"])] = r["text"]
            except Exception:  # a part being written right now: count it next time
                return None
        if rows:
            out[shard] = rows
    return out


def complete_checkpoint(workdir: Path, step: int):
    """checkpoint-`step`'s trainer_state.json, once written in full (it is saved last)."""
    path = workdir / CKPT / f"checkpoint-{step}" / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if state.get("global_step") == step else None


def tensor_shapes(model_dir: Path) -> dict:
    shapes = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


@pytest.fixture(scope="module")
def uninterrupted(pipeline, bundled_model):
    """The session pipeline's run of the same config, never interrupted."""
    pipeline.run(f"{GEN}/samples.parquet", TRAIN_TARGET)
    return pipeline


def test_killed_generation_and_training_resume_and_match_an_uninterrupted_run(
        tmp_path, bundled_model, uninterrupted):
    overlay = tmp_path / "kill.yaml"
    overlay.write_text(yaml.safe_dump({"generation": {"batch_problems": 1}}))
    configs = [*BASE_CONFIGS, overlay]
    (tmp_path / "resources/models").mkdir(parents=True)
    os.symlink(bundled_model, tmp_path / "resources/models" / MODEL)

    with _FileLock(VLLM_LOCK):
        # 1. Kill while a generate job runs, after it saved at least one problem.
        proc = start(tmp_path, configs, TRAIN_TARGET)
        before = kill_when(proc, lambda: saved_progress(tmp_path), "a saved problem")
        assert len(before) == 1, before  # one engine job at a time (gpu=1)
        (shard, saved), = before.items()
        n_done = len({pid for pid, _ in saved})
        assert 1 <= n_done < PROBLEMS_PER_SHARD
        assert not (tmp_path / f"{GEN}/shards/{shard}.parquet").exists()

        # 2. Rerun; kill it again once training has saved checkpoint-1 in full.
        unlock(tmp_path, configs)
        proc = start(tmp_path, configs, TRAIN_TARGET)
        kill_when(proc, lambda: complete_checkpoint(tmp_path, 1), "checkpoint-1")
        assert not complete_checkpoint(tmp_path, 2)
        # train_log.jsonl grows as steps are logged: only the steps trained so far.
        partial = (tmp_path / f"results/train/{RUN}/train_log.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in partial] in ([1], [1, 2]), partial
        unlock(tmp_path, configs)

    # Generation resumed: the finished problems were neither generated again nor changed.
    log = (tmp_path / f"logs/generate/{MODEL}/arith_train/shard{shard}.log").read_text()
    assert (f"shard {shard}/2: {PROBLEMS_PER_SHARD} problems, {n_done} already finished, "
            f"{PROBLEMS_PER_SHARD - n_done} to generate") in log
    rows = pq.read_table(tmp_path / f"{GEN}/shards/{shard}.parquet").to_pylist()
    after = {(r["problem_id"], r["sample_idx"]): r["text"] for r in rows}
    assert {k: after[k] for k in saved} == saved
    assert not (tmp_path / f"results/.progress/generate/{MODEL}/arith_train/"
                f"shard{shard}").exists()  # cleared once the shard is complete

    # 3. Rerun to the end: training resumes from checkpoint-1 and runs only step 2.
    run_snakemake(tmp_path, TRAIN_TARGET, configfiles=configs)
    trl_log = (tmp_path / f"logs/train/{RUN}/trl.log").read_text()
    summaries = [json.loads(line.split("trained: ", 1)[1]) for line in trl_log.splitlines()
                 if "trained: " in line]
    assert len(summaries) == 1, summaries
    assert summaries[0]["steps"] == 2
    assert summaries[0]["resumed_from"] == f"{CKPT}/checkpoint-1"
    assert f"resuming from {CKPT}/checkpoint-1" in trl_log
    assert complete_checkpoint(tmp_path, 2)  # global_step went on from 1 to 2

    # The outputs match the uninterrupted run in keys and counts.
    ref = uninterrupted
    got_s = pq.read_table(tmp_path / f"{GEN}/samples.parquet")
    ref_s = pq.read_table(ref.path(f"{GEN}/samples.parquet"))
    assert got_s.schema == ref_s.schema
    keys = lambda t: sorted(zip(t.column("problem_id").to_pylist(),  # noqa: E731
                                t.column("sample_idx").to_pylist()))
    assert keys(got_s) == keys(ref_s)
    assert len(keys(got_s)) == len(set(keys(got_s))) == 6 * 4
    got_g = json.loads((tmp_path / f"{GEN}/grade_summary.json").read_text())
    ref_g = json.loads(ref.path(f"{GEN}/grade_summary.json").read_text())
    assert set(got_g) == set(ref_g) and got_g["samples"] == ref_g["samples"]

    got_m, ref_m = tmp_path / TRAIN_TARGET, ref.path(TRAIN_TARGET)
    assert sorted(p.name for p in got_m.iterdir()) == sorted(p.name for p in ref_m.iterdir())
    assert tensor_shapes(got_m) == tensor_shapes(ref_m)
    history = [json.loads(x) for x in
               (tmp_path / f"results/train/{RUN}/train_log.jsonl").read_text().splitlines()]
    ref_history = [json.loads(x) for x in
                   ref.path(f"results/train/{RUN}/train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [h["step"] for h in ref_history] == [1, 2]
    assert [set(h) for h in history] == [set(h) for h in ref_history]


def test_a_checkpoint_saved_in_part_is_skipped(tmp_path):
    """A kill during a checkpoint's save leaves it without (or with a cut) trainer_state.json,
    which Trainer writes last; resuming must take the newest complete one."""
    from confagg.train_trl import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step, state in [(1, '{"global_step": 1}'), (2, '{"global_step": 2}'),
                        (10, '{"global_st'), (11, None)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_checkpoints_of_other_settings_or_data_are_discarded(tmp_path):
    """A changed setting or curated set reruns train_trl (its params, its input); the rerun
    must start over instead of resuming the old run's checkpoints. Raising max_steps
    keeps them (a longer run resumes)."""
    from confagg.config import load_config
    from confagg.train_trl import checkpoint_fingerprint, keep_matching_checkpoints

    cfg = load_config(*BASE_CONFIGS)["training"]
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "p", "answer": "1"}\n')

    def fp(c=cfg):
        return checkpoint_fingerprint(c, model_path="m", train_path=str(data), use_cpu=True)

    base = fp()
    longer = json.loads(json.dumps(cfg))
    longer["trl"].update(max_steps=cfg["trl"]["max_steps"] + 5, save_steps=7)
    assert fp(longer) == base
    assert fp({**cfg, "learning_rate": cfg["learning_rate"] * 2}) != base
    data.write_text('{"prompt": "p", "answer": "2"}\n')
    assert fp() != base

    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-1").mkdir(parents=True)
    keep_matching_checkpoints(ckpt, "a")  # no record of what made them: start over
    assert not (ckpt / "checkpoint-1").exists()
    (ckpt / "checkpoint-1").mkdir()
    keep_matching_checkpoints(ckpt, "a")
    assert (ckpt / "checkpoint-1").exists()  # same settings and data: resume
    keep_matching_checkpoints(ckpt, "b")
    assert not (ckpt / "checkpoint-1").exists()
    assert json.loads((ckpt / "fingerprint.json").read_text()) == {"fingerprint": "b"}


# ---------------------------------------------------------------- jobs die with Snakemake

def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def wait_until(cond, what: str, timeout: float = 120, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(step)
    return got


def job_process(snakemake_pid: int, script: str) -> int | None:
    """The PID of the job running `script` (workflow/scripts/<script>) among
    Snakemake's children."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == snakemake_pid and script.encode() in cmd:
            return int(name)
    return None


# A stand-in Snakemake (marks itself as the workflow does) and its job (watches it, as
# setup_logging makes every entry script do), with a grandchild of its own.
FAKE_SNAKEMAKE = textwrap.dedent("""
    import subprocess, sys, time
    from confagg.smk import mark_snakemake_process
    mark_snakemake_process()
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    time.sleep(120)
""")
FAKE_JOB = textwrap.dedent("""
    import logging, os, subprocess, sys, time
    from pathlib import Path
    from confagg.io import atomic_write_text
    from confagg.smk import die_with_snakemake
    out = Path(sys.argv[1])
    grandchild = subprocess.Popen(["sleep", "120"])
    (out / "pids.tmp").write_text(f"{os.getpid()} {grandchild.pid}")
    (out / "pids.tmp").rename(out / "pids")
    if (out / "wait_for_orphan").exists():  # start watching only once Snakemake is gone
        while not (out / "snakemake_gone").exists():
            time.sleep(0.02)
    die_with_snakemake(logging.getLogger())
    (out / "watching").write_text("")
    time.sleep(float((out / "work_s").read_text()))
    atomic_write_text(out / "output", "stale")
""")


def start_fake(tmp_path: Path, *, work_s: float, wait_for_orphan: bool = False):
    (tmp_path / "work_s").write_text(str(work_s))
    if wait_for_orphan:
        (tmp_path / "wait_for_orphan").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("CONFAGG_SNAKEMAKE_PROCS", None)
    return subprocess.Popen([sys.executable, "-c", FAKE_SNAKEMAKE, FAKE_JOB, str(tmp_path)],
                            env=env, start_new_session=True)


def test_a_job_dies_with_its_snakemake_and_takes_its_children(tmp_path):
    fake = start_fake(tmp_path, work_s=2)
    wait_until(lambda: (tmp_path / "watching").exists(), "watching job", timeout=60)
    job, grandchild = map(int, (tmp_path / "pids").read_text().split())
    fake.kill()  # the stand-in Snakemake's PID only; its group is left alone
    fake.wait()
    wait_until(lambda: not alive(job) and not alive(grandchild), "end of the job", timeout=5)
    time.sleep(3)  # the job's work would be done by now
    assert not (tmp_path / "output").exists()


def test_a_job_orphaned_before_it_could_watch_dies_at_once(tmp_path):
    fake = start_fake(tmp_path, work_s=0, wait_for_orphan=True)
    wait_until(lambda: (tmp_path / "pids").exists(), "job start", timeout=60)
    job, grandchild = map(int, (tmp_path / "pids").read_text().split())
    fake.kill()
    fake.wait()
    (tmp_path / "snakemake_gone").write_text("")
    wait_until(lambda: not alive(job) and not alive(grandchild), "end of the job", timeout=5)
    assert not (tmp_path / "watching").exists() and not (tmp_path / "output").exists()


def test_no_atomic_publish_once_a_check_refuses(tmp_path, monkeypatch):
    from confagg import io as cio
    from confagg.smk import Orphaned

    target = tmp_path / "samples.json"
    target.write_text("newer run")

    def refuse():
        raise Orphaned("Snakemake (pid 1) that started this job is gone")

    monkeypatch.setattr(cio, "_publish_checks", [refuse])
    with pytest.raises(Orphaned, match="is gone"):
        cio.atomic_write_text(target, "orphan")
    with pytest.raises(Orphaned):
        cio.write_parquet(tmp_path / "t.parquet", pa.table({"x": [1]}))
    assert target.read_text() == "newer run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.json"]  # no temp left


def test_grade_job_dies_with_snakemake_and_a_killed_job_publishes_nothing(
        tmp_path, pipeline, bundled_model):
    """The real grade_samples rule on a copy of the session pipeline's shards. 1: SIGKILL
    to Snakemake's PID alone: the job and its grader processes stop, nothing is written
    (an orphan used to finish and overwrite a newer run's samples.parquet). 2: SIGKILL
    to the job's process alone: Snakemake fails the job, nothing is written. 3: a rerun
    grades every sample."""
    pipeline.run(f"{GEN}/samples.parquet")
    (tmp_path / "resources/models").mkdir(parents=True)
    os.symlink(bundled_model, tmp_path / "resources/models" / MODEL)
    # copied in the order they were made, so that the shards are newer than their inputs
    for rel in ["resources/datasets/arith_train.jsonl", f"{GEN}/shards"]:
        src, dst = pipeline.path(rel), tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=shutil.copy)
        else:
            shutil.copy(src, dst)
        time.sleep(0.01)
    target, summary = tmp_path / f"{GEN}/samples.parquet", tmp_path / f"{GEN}/grade_summary.json"
    grade_log = tmp_path / f"logs/generate/{MODEL}/arith_train/grade.log"
    configs = BASE_CONFIGS

    def grade_job_watching(proc):
        assert proc.poll() is None, f"snakemake ended (rc {proc.returncode})"
        if grade_log.exists() and "watching Snakemake" in grade_log.read_text():
            return job_process(proc.pid, "grade_samples.py")
        return None

    with _FileLock(VLLM_LOCK):  # the kills race the job: keep engines off the cores
        plan = run_snakemake(tmp_path, f"{GEN}/samples.parquet", "-n", configfiles=configs,
                             lock=False).stdout
        assert "rule generate:" not in plan and "rule grade_samples:" in plan, plan

        # 1. Snakemake alone.
        proc = start(tmp_path, configs, f"{GEN}/samples.parquet")
        job = wait_until(lambda: grade_job_watching(proc), "watching grade job", timeout=300)
        family = [job, *descendants(job)]
        proc.kill()
        proc.wait()
        wait_until(lambda: not any(alive(p) for p in family), "end of the grade job",
                   timeout=5)
        assert "that started this job is gone: stopping this job" in grade_log.read_text()
        assert not target.exists() and not summary.exists()
        unlock(tmp_path, configs)

        # 2. The job alone.
        grade_log.unlink()
        proc = start(tmp_path, configs, f"{GEN}/samples.parquet")
        job = wait_until(lambda: grade_job_watching(proc), "watching grade job", timeout=300)
        os.kill(job, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
        assert not target.exists() and not summary.exists()
        assert not alive(job)

    # 3. A rerun completes.
    run_snakemake(tmp_path, f"{GEN}/samples.parquet", configfiles=configs)
    got = pq.read_table(target)
    ref = pq.read_table(pipeline.path(f"{GEN}/samples.parquet"))
    assert got.schema == ref.schema and got.num_rows == ref.num_rows
    assert json.loads(summary.read_text())["samples"] == ref.num_rows


def descendants(pid: int) -> list[int]:
    from confagg.smk import _descendants

    return _descendants(pid)
