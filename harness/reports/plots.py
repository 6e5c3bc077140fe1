"""Study plots: accuracy vs round and vs simulated time, one PNG per (data set, partition).

Each algorithm is one line (mean over its seeds) with a band from the lowest to the highest
seed: with 3 seeds a min-max band shows every seed, where a +-std band would pretend to know a
distribution. On the time panel each point sits at the round's simulated time averaged over the
seeds (device draws differ per seed, so seeds reach a round at different simulated times).

Figures are built as matplotlib.figure.Figure objects, not through pyplot: pyplot keeps one
global registry of figures per process, which is neither thread-safe nor needed to write a PNG,
so these plots can be drawn while study cells plot their own curves in other threads, and no
backend has to be chosen on import.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def plot_slug(dataset: str, partition: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{dataset}_{partition}").strip("-").lower()


def plot_study_curves(curves: pd.DataFrame, runs: pd.DataFrame, out_dir: Path,
                      metric: str = "personal_acc") -> list[Path]:
    """curves: run_id, step, <metric>, sim_time; runs: run_id, dataset, partition, budget, label."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if curves.empty or runs.empty:
        return paths
    # one colour per algorithm across all figures
    colours = {label: f"C{i % 10}" for i, label in enumerate(sorted(runs["label"].unique()))}
    merged = curves.merge(runs[["run_id", "dataset", "partition", "budget", "label"]], on="run_id")
    for (dataset, partition), block in merged.groupby(["dataset", "partition"], sort=True):
        several_budgets = block["budget"].nunique() > 1
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2)
        for (label, budget), lines in block.groupby(["label", "budget"], sort=True):
            name = f"{label} [{budget}]" if several_budgets else label
            acc = lines.pivot_table(index="step", columns="run_id", values=metric, aggfunc="last").dropna()
            if acc.empty:
                continue
            clock = lines.pivot_table(index="step", columns="run_id", values="sim_time", aggfunc="last")
            clock = clock.reindex(index=acc.index, columns=acc.columns)
            mean, low, high = acc.mean(axis=1), acc.min(axis=1), acc.max(axis=1)
            n = acc.shape[1]
            (line,) = axes[0].plot(acc.index, mean, marker=".", color=colours[label], label=f"{name} (n={n})")
            axes[0].fill_between(acc.index, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            t = clock.mean(axis=1)
            axes[1].plot(t, mean, marker=".", color=line.get_color(), label=f"{name} (n={n})")
            axes[1].fill_between(t, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axes[0].set_xlabel("round")
        axes[1].set_xlabel("simulated time (s), mean over seeds")
        for ax in axes:
            ax.set_ylabel("personalized test accuracy" if metric == "personal_acc" else metric)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{dataset} — {partition}: mean over seeds, band = min–max over seeds", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{plot_slug(dataset, partition)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths
