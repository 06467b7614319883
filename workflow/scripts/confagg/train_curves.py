"""Training curves per step: reward, KL, response length and gradient norm.

Reads TRL's train_log.jsonl or OpenRLHF's TensorBoard events (its only per-step log);
each panel takes the first of its metric's names that the log holds. Several runs (the
confidence run and the AggLM baseline's) share one figure, a line per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import DataError, read_jsonl

# panel -> the metric's names: TRL's first, then OpenRLHF's (TensorBoard tags without "train/").
CURVES = {
    "reward": ("reward", "rollout/reward_mean", "reward_mean"),
    "KL": ("kl",),
    "response length (tokens)": ("completions/mean_length", "rollout/response_length_mean",
                                 "response_length"),
    "grad norm": ("grad_norm", "actor_grad_norm"),
}


def from_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """train_log.jsonl rows; each needs an integer `step`."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("step"), int):
            raise DataError(path, "step must be an integer", row=i, field="step")
    return rows


def from_tensorboard(logdir: str | Path) -> list[dict[str, Any]]:
    """Scalars under `train/` in every event file below `logdir`, one row per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    if not files:
        raise DataError(logdir, "no TensorBoard event files")
    steps: dict[int, dict[str, Any]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("train/"):
                for ev in acc.Scalars(tag):
                    steps.setdefault(ev.step, {"step": ev.step})[tag[len("train/"):]] = ev.value
    return [steps[s] for s in sorted(steps)]


def series(rows: list[dict[str, Any]], names: tuple[str, ...]) -> tuple[str | None, list, list]:
    """(the metric name found, steps, values) for the first of `names` the rows hold."""
    for name in names:
        pts = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
        if pts:
            return name, [p[0] for p in pts], [p[1] for p in pts]
    return None, [], []


def plot(runs: list[dict[str, Any]] | dict[str, list[dict[str, Any]]], out: str | Path,
         title: str) -> dict[str, str | None]:
    """A 2 x 2 figure of the curves of one run's rows, or of several runs ({run: rows}:
    a line per run, labelled); returns which metric each panel shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labelled = isinstance(runs, dict)
    by_run = runs if labelled else {None: runs}
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    shown = {}
    for ax, (label, names) in zip(axes.flat, CURVES.items()):
        found = []
        for run, rows in by_run.items():
            name, x, y = series(rows, names)
            if name is not None:
                found.append(name)
                ax.plot(x, y, marker="o" if len(x) < 30 else None, lw=1.2, label=run)
        name = found[0] if found else None
        shown[label] = name
        if name is None:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label if name is None else f"{label} [{name}]", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    for ax in axes[1]:
        ax.set_xlabel("step")
    if labelled:
        handles, names = axes.flat[0].get_legend_handles_labels()
        for ax in axes.flat[1:]:  # a run that logged no reward still gets its entry
            for h, n in zip(*ax.get_legend_handles_labels()):
                if n not in names:
                    handles.append(h)
                    names.append(n)
        fig.legend(handles, names, loc="upper right", fontsize=9, title="run")
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return shown
