"""Plots of one run (accuracy vs round and vs simulated time)."""

from __future__ import annotations

import threading
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: pyplot keeps global figure state: runs finishing together in threads (a study's parallel cells) take turns
PYPLOT_LOCK = threading.Lock()


def plot_run_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    with PYPLOT_LOCK:
        return _plot_run_curves(history, path, title)


def _plot_run_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    evaluated = [h for h in history if "personal_acc" in h]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("personal_acc", "personalized"), ("global_acc", "global"),
                       ("personal_acc_worst10", "personalized, worst 10%")):
        if all(h[key] != h[key] for h in evaluated):  # all NaN: the algorithm has no global model
            continue
        xs = [h["round"] for h in evaluated]
        axes[0].plot(xs, [h[key] for h in evaluated], label=label, marker=".")
        axes[1].plot([h["sim_time"] for h in evaluated], [h[key] for h in evaluated], label=label, marker=".")
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("simulated time (s)")
    for ax in axes:
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
