"""Training curves per step: reward, KL, response length and gradient norm.

Reads TRL's train_log.jsonl or OpenRLHF's TensorBoard events (its only per-step log);
each panel takes the first of its metric's names that the log holds.
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


def plot(rows: list[dict[str, Any]], out: str | Path, title: str) -> dict[str, str | None]:
    """A 2 x 2 figure of the curves; returns which metric each panel shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    shown = {}
    for ax, (label, names) in zip(axes.flat, CURVES.items()):
        name, x, y = series(rows, names)
        shown[label] = name
        if name is None:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.plot(x, y, marker="o" if len(x) < 30 else None, lw=1.2)
        ax.set_title(label if name is None else f"{label} [{name}]", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return shown
