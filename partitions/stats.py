"""Partition statistics and pictures: summary table and a labels-per-client heatmap.

The engine logs `save_partition_artifacts` (summary CSV, per-client CSV, heatmap PNG) and the
`partition_summary` values (as tags) to MLflow with every run; `fedharness partition` prints
the same summary and writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from partitions.federated import FederatedDataset  # noqa: E402
from partitions.virtual import is_virtual  # noqa: E402


def imbalance_index(counts: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one
    (0 = IID, close to 1 = every client sees labels the population rarely has)."""
    sizes = counts.sum(1, keepdims=True)
    if not (sizes[:, 0] > 0).any():
        return 0.0
    local = counts / np.maximum(sizes, 1)
    overall = counts.sum(0) / max(counts.sum(), 1)
    return float(0.5 * np.abs(local - overall).sum(1)[sizes[:, 0] > 0].mean())


def _report_counts(fed: FederatedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(clients, their label counts): every client, or for a virtual population (partitions/virtual.py) its
    `report_clients` (a seeded sample of at most 10,000) so that no N x classes array is built."""
    if is_virtual(fed):
        clients = fed.report_clients()
        return clients, fed.label_counts_of(clients)
    return np.arange(fed.num_clients), fed.label_counts()


def partition_summary(fed: FederatedDataset) -> dict[str, float | int | str]:
    """One row: clients, samples per client (min/median/max, coefficient of variation), classes
    per client, label imbalance (mean TV distance to the global label distribution), split sizes.
    A virtual population: sizes over all clients, classes and imbalance over `report_clients`."""
    if is_virtual(fed):
        return _virtual_summary(fed)
    counts = fed.label_counts()
    sizes = counts.sum(1)
    classes = (counts > 0).sum(1)
    out: dict[str, float | int | str] = {
        "dataset": fed.name,
        "scheme": str(fed.meta.get("scheme", "")),
        "clients": int(fed.num_clients),
        "train_clients": int(len(fed.train_clients)),
        "samples": int(sizes.sum()),
        "samples_unassigned": int(len(fed.y) - sizes.sum()),
        "samples_min": int(sizes.min()),
        "samples_median": float(np.median(sizes)),
        "samples_max": int(sizes.max()),
        "samples_cv": round(float(sizes.std() / max(sizes.mean(), 1e-12)), 4),
        "classes_per_client_mean": round(float(classes.mean()), 4),
        "classes_per_client_min": int(classes.min()),
        "classes_per_client_max": int(classes.max()),
        "imbalance_index": round(imbalance_index(counts), 4),
    }
    for split in fed.index:
        out[f"{split}_samples"] = int(len(fed.index[split]))
    return out


def _virtual_summary(fed: FederatedDataset) -> dict[str, float | int | str]:
    sizes = sum(fed.sizes(split) for split in fed.index)
    clients, counts = _report_counts(fed)
    classes = (counts > 0).sum(1)
    out: dict[str, float | int | str] = {
        "dataset": fed.name, "scheme": str(fed.meta.get("scheme", "")) + " (virtual)",
        "clients": int(fed.num_clients), "train_clients": int(len(fed.train_clients)),
        "base_clients": int(fed.base_clients), "summarized_clients": int(len(clients)),
        "samples": int(sizes.sum()), "samples_min": int(sizes.min()), "samples_median": float(np.median(sizes)),
        "samples_max": int(sizes.max()), "samples_cv": round(float(sizes.std() / max(sizes.mean(), 1e-12)), 4),
        "classes_per_client_mean": round(float(classes.mean()), 4),
        "classes_per_client_min": int(classes.min()), "classes_per_client_max": int(classes.max()),
        "imbalance_index": round(imbalance_index(counts), 4),
    }
    for split in fed.index:
        out[f"{split}_samples"] = int(fed.sizes(split).sum())
    return out


def format_summary(summary: dict) -> str:
    """Two-column text table (metric | value) for the terminal."""
    width = max(len(k) for k in summary)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for key, value in summary.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def per_client_table(fed: FederatedDataset) -> pd.DataFrame:
    """One row per client (a virtual population: per report client, with its base client)."""
    clients, counts = _report_counts(fed)
    df = pd.DataFrame({"client": clients})
    for split in fed.index:
        df[f"{split}_samples"] = fed.sizes(split)[clients]
    df["classes"] = (counts > 0).sum(1)
    if is_virtual(fed):
        df["base_client"] = fed.base_of[clients]
        return df
    df["unseen"] = ~np.isin(df["client"], fed.train_clients)
    if "client_groups" in fed.meta:
        df["group"] = fed.meta["client_groups"]
    shift = fed.meta.get("feature_shift")
    if shift:
        df["rotation_deg"] = np.round(shift["degrees"], 3)
        df["noise_std"] = np.round(shift["noise_std"], 4)
    return df


def plot_label_heatmap(fed: FederatedDataset, path: Path, max_clients: int = 200) -> Path:
    """Samples per (label, client) for the first `max_clients` clients, with the client sizes
    above it on the same x axis; unseen (evaluation-only) clients are marked."""
    first = np.arange(min(max_clients, fed.num_clients))
    shown = fed.label_counts_of(first) if is_virtual(fed) else fed.label_counts()[:max_clients]
    n_shown = len(shown)
    height = 2.2 + 0.1 * min(fed.num_classes, 100)
    fig, (top, ax) = plt.subplots(2, 1, figsize=(min(16, 4 + 0.06 * n_shown), height + 1.6), sharex=True,
                                  gridspec_kw={"height_ratios": [1, 3]})
    unseen = np.isin(np.arange(n_shown), fed.meta.get("unseen_clients", []))
    top.bar(np.arange(n_shown), shown.sum(1), width=1.0, color=np.where(unseen, "tab:orange", "tab:blue"))
    top.set_ylabel("samples")
    top.set_title(f"{fed.name}, {fed.meta.get('scheme', '')}: labels per client "
                  f"(first {n_shown} of {fed.num_clients}; orange = unseen)", fontsize=10)
    im = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest",
                   norm=PowerNorm(0.5, vmin=0, vmax=max(int(shown.max()), 1)),  # sqrt scale: small counts show
                   extent=(-0.5, n_shown - 0.5, fed.num_classes - 0.5, -0.5))
    ax.set_xlabel("client")
    ax.set_ylabel("label")
    fig.colorbar(im, ax=[top, ax], label="samples (sqrt scale)", fraction=0.03)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_partition_artifacts(fed: FederatedDataset, folder: Path, max_clients: int = 200) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "partition_clients.csv"
    per_client_table(fed).to_csv(table, index=False)
    summary_row = partition_summary(fed)
    summary = folder / "partition_summary.csv"
    pd.DataFrame([summary_row]).to_csv(summary, index=False)
    (folder / "partition_summary.json").write_text(json.dumps(summary_row, indent=1))
    heatmap = plot_label_heatmap(fed, folder / "partition_heatmap.png", max_clients=max_clients)
    return [summary, table, heatmap]
