"""Study figures, one set per (data set, partition), each written as PNG, PDF and SVG:

- `<slug>`: a 2 x 3 panel figure. Top: personalized, global and worst-10% accuracy against the round;
  bottom: personalized accuracy against simulated time and against bytes communicated, and the
  per-client fairness view (the empirical CDF of the final per-client personalized accuracy,
  pooled over seeds; from each run's clients_final.csv).
- Lines are means over seeds; the band is the 95% t confidence interval of that mean at each round
  (`band="minmax"`: the lowest to the highest seed instead), clipped to [0, 1]. One seed: no band.
- Time and bytes panels put each point at the round's simulated time / total bytes averaged over the
  seeds (device draws differ per seed, so seeds reach a round at different times).

Style (colours, line styles, markers, integer round ticks, vector output) comes from
harness.figure_style, shared with every other figure.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from harness.figure_style import algorithm_styles, integer_rounds, new_figure, save_figure, styled

PANELS = [("personal_acc", "step", "personalized accuracy", "round"),
          ("global_acc", "step", "global-model accuracy", "round"),
          ("personal_acc_worst10", "step", "worst-10% clients' accuracy", "round"),
          ("personal_acc", "sim_time", "personalized accuracy", "simulated time (s), mean over seeds"),
          ("personal_acc", "bytes_total", "personalized accuracy", "MB communicated (up + down), mean over seeds")]
CAPTION = {"ci": "line = mean over seeds, band = 95% t confidence interval of the mean",
           "minmax": "line = mean over seeds, band = lowest to highest seed"}


def plot_slug(dataset: str, partition: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{dataset}_{partition}").strip("-").lower()


def band(values: pd.DataFrame, kind: str = "ci") -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per row (a round), over columns (seeds): mean, and the band's low and high edges."""
    if kind not in CAPTION:
        raise ValueError(f"unknown band {kind!r}; choose ci or minmax")
    mean = values.mean(axis=1)
    if kind == "minmax":
        return mean, values.min(axis=1), values.max(axis=1)
    n = values.notna().sum(axis=1)
    sem = values.std(axis=1, ddof=1) / np.sqrt(n)
    half = pd.Series(stats.t.ppf(0.975, np.maximum(n - 1, 1)), index=values.index) * sem
    half = half.where(n > 1, 0.0).fillna(0.0)
    return mean, mean - half, mean + half


def plot_study_curves(curves: pd.DataFrame, runs: pd.DataFrame, out_dir: Path, band_kind: str = "ci",
                      clients: pd.DataFrame | None = None) -> list[Path]:
    """curves: run_id, step, personal_acc, [global_acc, personal_acc_worst10, bytes_total], sim_time;
    runs: run_id, dataset, partition, budget, label; clients: run_id, personal_acc (final, per client).
    Returns the PNG paths (PDF and SVG lie beside them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if curves.empty or runs.empty:
        return paths
    looks = algorithm_styles(runs["label"])
    merged = curves.merge(runs[["run_id", "dataset", "partition", "budget", "label"]], on="run_id")
    if "bytes_total" in merged:
        merged["bytes_total"] = merged["bytes_total"] / 1e6
    for (dataset, partition), block in merged.groupby(["dataset", "partition"], sort=True):
        fig = new_figure(12.0, 6.4)
        axes = styled(fig, 2, 3).ravel()
        several_budgets = block["budget"].nunique() > 1
        for (label, budget), lines in block.groupby(["label", "budget"], sort=True):
            name = f"{label} [{budget}]" if several_budgets else label
            for ax, (metric, x, ylabel, xlabel) in zip(axes[:5], PANELS, strict=True):
                _draw(ax, lines, metric, x, band_kind, looks[label], name)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
        for ax in axes[:3]:
            integer_rounds(ax)
        if clients is not None and not clients.empty:
            _draw_fairness(axes[5], clients, runs[(runs["dataset"] == dataset) & (runs["partition"] == partition)],
                           looks)
        else:
            axes[5].set_axis_off()
            axes[5].text(0.5, 0.5, "no per-client results\n(clients_final.csv)", ha="center", va="center")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), bbox_to_anchor=(0.5, -0.01),
                   frameon=False)
        fig.suptitle(f"{dataset} — {partition}: {CAPTION[band_kind]}")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        paths.append(save_figure(fig, out_dir / plot_slug(dataset, partition))[0])
    return paths


def _draw(ax, lines: pd.DataFrame, metric: str, x: str, band_kind: str, look: dict, name: str) -> None:
    if metric not in lines or x not in lines or lines[metric].isna().all():
        return
    acc = lines.pivot_table(index="step", columns="run_id", values=metric, aggfunc="last").dropna()
    if acc.empty:
        return
    mean, low, high = band(acc, band_kind)
    low, high = low.clip(0.0, 1.0), high.clip(0.0, 1.0)  # accuracies: a t interval of 2 seeds can leave [0, 1]
    if x == "step":
        xs = acc.index.to_numpy()
    else:
        xs = lines.pivot_table(index="step", columns="run_id", values=x, aggfunc="last") \
            .reindex(index=acc.index, columns=acc.columns).mean(axis=1).to_numpy()
    every = max(1, len(xs) // 12)  # markers stay legible on long curves
    ax.plot(xs, mean, label=f"{name} (n={acc.shape[1]})", markevery=every, **look)
    ax.fill_between(xs, low, high, color=look["color"], alpha=0.15, linewidth=0)


def _draw_fairness(ax, clients: pd.DataFrame, runs: pd.DataFrame, looks: dict) -> None:
    """Empirical CDF of the final per-client personalized accuracy, clients of all seeds pooled."""
    merged = clients.merge(runs[["run_id", "label"]], on="run_id")
    for label, block in merged.groupby("label", sort=True):
        acc = np.sort(block["personal_acc"].dropna().to_numpy())
        if acc.size == 0:
            continue
        look = dict(looks[label])
        look.pop("marker")
        ax.step(acc, np.arange(1, acc.size + 1) / acc.size, where="post", **look)
    ax.set_xlabel("final personalized accuracy of a client")
    ax.set_ylabel("fraction of clients (CDF)")
    ax.set_title("fairness: lower-right is better", fontsize=8)
