"""Partition statistics and pictures: summary table and a labels-per-client heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from partitions.federated import FederatedDataset  # noqa: E402


def imbalance_index(counts: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one
    (0 = IID, close to 1 = every client sees labels the population rarely has)."""
    sizes = counts.sum(1, keepdims=True)
    local = counts / np.maximum(sizes, 1)
    overall = counts.sum(0) / max(counts.sum(), 1)
    return float(0.5 * np.abs(local - overall).sum(1)[sizes[:, 0] > 0].mean())


def partition_summary(fed: FederatedDataset) -> dict[str, float | int | str]:
    counts = fed.label_counts()
    sizes = counts.sum(1)
    classes = (counts > 0).sum(1)
    return {
        "dataset": fed.name,
        "clients": int(fed.num_clients),
        "train_clients": int(len(fed.train_clients)),
        "samples": int(sizes.sum()),
        "samples_min": int(sizes.min()),
        "samples_median": float(np.median(sizes)),
        "samples_max": int(sizes.max()),
        "classes_per_client_mean": float(classes.mean()),
        "classes_per_client_min": int(classes.min()),
        "imbalance_index": round(imbalance_index(counts), 4),
    }


def per_client_table(fed: FederatedDataset) -> pd.DataFrame:
    counts = fed.label_counts()
    df = pd.DataFrame({"client": np.arange(fed.num_clients)})
    for split in fed.index:
        df[f"{split}_samples"] = fed.sizes(split)
    df["classes"] = (counts > 0).sum(1)
    df["unseen"] = ~np.isin(df["client"], fed.train_clients)
    return df


def plot_label_heatmap(fed: FederatedDataset, path: Path, max_clients: int = 200) -> Path:
    counts = fed.label_counts()
    shown = counts[:max_clients]
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.06 * len(shown)), 3 + 0.12 * min(fed.num_classes, 62)))
    im = ax.imshow(shown.T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel(f"client (first {len(shown)} of {fed.num_clients})")
    ax.set_ylabel("label")
    ax.set_title(f"{fed.name}: samples per label and client")
    fig.colorbar(im, ax=ax, label="samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_partition_artifacts(fed: FederatedDataset, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "partition_clients.csv"
    per_client_table(fed).to_csv(table, index=False)
    summary = folder / "partition_summary.csv"
    pd.DataFrame([partition_summary(fed)]).to_csv(summary, index=False)
    heatmap = plot_label_heatmap(fed, folder / "partition_heatmap.png")
    return [summary, table, heatmap]
