"""Partition speed on real MNIST (60,000 train images): every scheme at 100 / 1,000 / 10,000
clients, the cache, the feature shift, and the peers' Dirichlet redraw loop for contrast.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_partition.py [--quick]

Writes bench/results/partition.json, partition.md, partition.png (time vs clients),
partition_heatmaps.png (what the schemes look like) and partition_cli_heatmap.png (the picture
`fedharness partition` draws); docs/partitions.md quotes them.
Times are medians of `--repeats` runs of partition_data (partitioner + local split + CSR
arrays), with the partition cache off unless stated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from partitions import partition_data  # noqa: E402
from partitions.federated import ArrayData  # noqa: E402
from partitions.sources import load_source  # noqa: E402
from partitions.spec import DataSpec, PartitionSpec  # noqa: E402
from partitions.stats import imbalance_index  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results"
SCHEMES = {
    "iid": {},
    "dirichlet a=0.1": {"scheme": "dirichlet", "alpha": 0.1},
    "dirichlet a=0.5": {"scheme": "dirichlet", "alpha": 0.5},
    "pathological k=2": {"scheme": "pathological", "classes_per_client": 2},
    "shards 2/client": {"scheme": "shards", "shards_per_client": 2},
    "quantity lognormal": {"scheme": "quantity", "quantity_sigma": 1.0},
}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peer_dirichlet(y: np.ndarray, k: int, alpha: float, min_size: int, seed: int, budget_s: float) -> dict:
    """The redraw loop of FL-bench / PFLlib / the Hsu et al. code that most peers copy: per class,
    Dirichlet proportions (zeroed for clients already above N/K), then redraw everything until the
    smallest client has min_size. Stopped after budget_s seconds."""
    gen = np.random.default_rng(seed)
    n, classes = len(y), np.unique(y)
    attempts, smallest, t0 = 0, 0, time.perf_counter()
    while smallest < min_size:
        if time.perf_counter() - t0 > budget_s:
            return {"succeeded": False, "attempts": attempts, "seconds": time.perf_counter() - t0,
                    "smallest_seen": int(smallest)}
        attempts += 1
        batches: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            gen.shuffle(idx)
            p = gen.dirichlet(np.repeat(alpha, k))
            p = np.array([q * (len(b) < n / k) for q, b in zip(p, batches, strict=True)])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            batches = [b + part.tolist() for b, part in zip(batches, np.split(idx, cuts), strict=True)]
        smallest = min(len(b) for b in batches)
    return {"succeeded": True, "attempts": attempts, "seconds": time.perf_counter() - t0, "smallest_seen": smallest}


def load_mnist(cache: Path) -> tuple[ArrayData, str]:
    if (SHARED / "mnist").exists():
        return load_source(DataSpec(source="mnist", root=str(SHARED / "mnist"), split="train",
                                    cache_dir=str(cache))), "MNIST train (real, ../shared/data/mnist)"
    gen = np.random.default_rng(0)  # same size and label counts; only when the real copy is absent
    y = np.repeat(np.arange(10), 6000)
    return (ArrayData(gen.integers(0, 256, (60000, 1, 28, 28), dtype=np.uint8), y, 10, (0.5,), (0.3,), "synthetic"),
            "synthetic 60,000 labels (../shared/data/mnist absent)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-budget", type=float, default=30.0, help="seconds given to the peers' redraw loop")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 10 s peer budget (smoke run)")
    args = ap.parse_args(argv)
    repeats, peer_budget = (1, 10.0) if args.quick else (args.repeats, args.peer_budget)
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-partition-"))
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    data, data_label = load_mnist(tmp / "data")
    load_cold = time.perf_counter() - t0
    load_warm, _ = timed(lambda: load_mnist(tmp / "data"), 1)
    print(f"data: {data_label}, N={len(data.y)}; load {load_cold:.2f}s cold (unpack .gz), {load_warm:.2f}s warm")

    rows = []
    for clients in (100, 1000, 10000):
        for label, fields in SCHEMES.items():
            min_samples = 5 if fields.get("scheme") in ("dirichlet", "quantity") else 1  # others: sizes fixed
            part = PartitionSpec(**{"scheme": "iid", **fields, "num_clients": clients, "min_samples": min_samples,
                                    "cache_dir": None})
            seconds, fed = timed(lambda part=part: partition_data(data, part, seed=0), repeats)
            counts = fed.label_counts()
            sizes = counts.sum(1)
            rows.append({"scheme": label, "clients": clients, "seconds": round(seconds, 4),
                         "samples_min": int(sizes.min()), "samples_median": float(np.median(sizes)),
                         "samples_max": int(sizes.max()),
                         "classes_per_client": round(float((counts > 0).sum(1).mean()), 2),
                         "imbalance_index": round(imbalance_index(counts), 3)})
            print(f"  {label:<20} {clients:>6} clients  {seconds * 1000:8.1f} ms   classes/client "
                  f"{rows[-1]['classes_per_client']:5.2f}  sizes {sizes.min()}..{sizes.max()}")

    headline = PartitionSpec(scheme="dirichlet", num_clients=10000, alpha=0.1, min_samples=5,
                             cache_dir=str(tmp / "parts"))
    miss, _ = timed(lambda: partition_data(data, headline, seed=0), 1)
    hit, _ = timed(lambda: partition_data(data, headline, seed=0), repeats)
    shift = PartitionSpec(**{**headline.model_dump(), "cache_dir": None, "feature_shift": {"kind": "rotation+noise"}})
    shift_s, _ = timed(lambda: partition_data(data, shift, seed=0), 1)
    ours_10k = next(r["seconds"] for r in rows if r["scheme"] == "dirichlet a=0.1" and r["clients"] == 10000)
    print(f"headline: 10,000 clients, Dirichlet 0.1, min 5 on {len(data.y)} samples: {ours_10k:.3f}s "
          f"(cache write {miss:.3f}s, cache hit {hit:.3f}s; + rotation+noise shift of all images {shift_s:.2f}s)")

    peers = []
    for clients, alpha, min_size in ((100, 0.1, 10), (1000, 0.1, 5), (10000, 0.1, 5)):
        ours, _ = timed(lambda c=clients, a=alpha, m=min_size: partition_data(
            data, PartitionSpec(scheme="dirichlet", num_clients=c, alpha=a, min_samples=m, cache_dir=None), 0), 1)
        peer = peer_dirichlet(data.y, clients, alpha, min_size, seed=0, budget_s=peer_budget)
        peers.append({"clients": clients, "alpha": alpha, "min_samples": min_size, "ours_seconds": round(ours, 4),
                      "peer_succeeded": peer["succeeded"], "peer_attempts": peer["attempts"],
                      "peer_seconds": round(peer["seconds"], 2), "peer_smallest_client": peer["smallest_seen"]})
        verdict = (f"done after {peer['attempts']} draws" if peer["succeeded"]
                   else f"gave up after {peer['attempts']} draws, smallest client {peer['smallest_seen']}")
        ratio = (f"peers/ours {peer['seconds'] / ours:.2g}x" if peer["succeeded"]
                 else f"peers still unfinished at {peer['seconds'] / ours:.0f}x our time")
        print(f"  peers' redraw loop, {clients} clients a={alpha} min {min_size}: {peer['seconds']:.2f}s, {verdict}; "
              f"ours {ours:.3f}s incl. local split ({ratio})")

    cifar = None
    blob = SHARED / "cifar10" / "cifar10_jpeg_blob.npz"
    if blob.exists():
        spec = DataSpec(source="arrays", root=str(blob), cache_dir=str(tmp / "data"))
        cold, _ = timed(lambda: load_source(spec), 1)
        warm, _ = timed(lambda: load_source(spec), 1)
        cifar = {"decode_seconds": round(cold, 2), "cached_seconds": round(warm, 2)}
        print(f"CIFAR-10 JPEG blob: first load (decode 60,000 JPEGs) {cold:.2f}s, from the cache {warm:.2f}s")

    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared; 1-min load "
                         f"average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end)",
              "torch_threads": 1, "data": data_label, "samples": int(len(data.y)), "repeats": repeats,
              "load_seconds": {"cold": round(load_cold, 3), "warm": round(load_warm, 3)},
              "schemes": rows,
              "headline": {"clients": 10000, "alpha": 0.1, "min_samples": 5, "seconds": ours_10k,
                           "cache_write_seconds": round(miss, 4), "cache_hit_seconds": round(hit, 4),
                           "with_rotation_noise_seconds": round(shift_s, 3)},
              "peer_redraw": peers, "cifar10_jpeg": cifar}
    (OUT / "partition.json").write_text(json.dumps(result, indent=1))
    write_markdown(result)
    plot_times(result)
    plot_heatmaps(data)
    print(f"wrote {OUT / 'partition.json'}, partition.md, partition.png, partition_heatmaps.png, "
          f"partition_cli_heatmap.png")
    return 0


def write_markdown(r: dict) -> None:
    lines = [f"# Partition benchmark\n\n{r['data']}, N={r['samples']}; {r['machine']}; torch threads 1; "
             f"median of {r['repeats']}; min_samples 5 for Dirichlet and quantity (1 for the schemes whose sizes "
             f"are fixed by construction); cache off.\n",
             "| scheme | clients | seconds | samples min / median / max | classes per client | imbalance |",
             "|---|---:|---:|---|---:|---:|"]
    for row in r["schemes"]:
        lines.append(f"| {row['scheme']} | {row['clients']:,} | {row['seconds']:.3f} | {row['samples_min']} / "
                     f"{row['samples_median']:g} / {row['samples_max']} | {row['classes_per_client']} | "
                     f"{row['imbalance_index']} |")
    h = r["headline"]
    lines += ["", f"Headline: 10,000 clients, Dirichlet 0.1, min 5 on {r['samples']:,} samples in {h['seconds']:.3f} s "
                  f"(cache write {h['cache_write_seconds']:.3f} s, cache hit {h['cache_hit_seconds']:.3f} s; with a "
                  f"per-client rotation+noise shift of every image {h['with_rotation_noise_seconds']:.2f} s). "
                  f"Loading MNIST: {r['load_seconds']['cold']:.2f} s cold, {r['load_seconds']['warm']:.2f} s warm.",
              "", "Dirichlet with a minimum size, ours (incl. local split) vs the peers' redraw loop (given "
                  "a time budget):", "",
              "| setting | ours (s) | peers (s) | peers' outcome |", "|---|---:|---:|---|"]
    for p in r["peer_redraw"]:
        outcome = (f"done after {p['peer_attempts']} draws" if p["peer_succeeded"] else
                   f"never met the minimum: stopped after {p['peer_attempts']} draws, smallest client "
                   f"{p['peer_smallest_client']}")
        lines.append(f"| {p['clients']:,} clients, alpha {p['alpha']}, min {p['min_samples']} | "
                     f"{p['ours_seconds']:.3f} | {p['peer_seconds']:.2f} | {outcome} |")
    if r["cifar10_jpeg"]:
        c = r["cifar10_jpeg"]
        lines += ["", f"CIFAR-10 JPEG blob: decoding 60,000 JPEGs {c['decode_seconds']} s on first load, "
                      f"{c['cached_seconds']} s from the data cache."]
    (OUT / "partition.md").write_text("\n".join(lines) + "\n")


def plot_times(r: dict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for scheme in SCHEMES:
        pts = [(row["clients"], row["seconds"]) for row in r["schemes"] if row["scheme"] == scheme]
        ax.plot(*zip(*pts, strict=True), marker="o", label=scheme)
    peers = [(p["clients"], p["peer_seconds"], p["peer_succeeded"]) for p in r["peer_redraw"]]
    ax.plot([p[0] for p in peers], [p[1] for p in peers], "k--", marker="x", label="peers' Dirichlet redraw loop")
    for clients, seconds, ok in peers:
        if not ok:
            ax.annotate("gave up\n(never met min)", (clients, seconds), textcoords="offset points", xytext=(-60, -28),
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("clients")
    ax.set_ylabel("seconds (partition + local split)")
    ax.set_title(f"Partitioning {r['samples']:,} MNIST samples", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "partition.png", dpi=110)
    plt.close(fig)


def plot_heatmaps(data: ArrayData) -> None:
    panels = [("Dirichlet alpha=0.1", {"scheme": "dirichlet", "alpha": 0.1}),
              ("Dirichlet alpha=1.0", {"scheme": "dirichlet", "alpha": 1.0}),
              ("pathological k=2", {"scheme": "pathological", "classes_per_client": 2}),
              ("quantity lognormal", {"scheme": "quantity"})]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(17, 3.2))
    for ax, (title, fields) in zip(axes, panels, strict=False):
        fed = partition_data(data, PartitionSpec(**fields, num_clients=40, cache_dir=None), seed=0)
        ax.imshow(fed.label_counts().T, aspect="auto", cmap="viridis", interpolation="nearest", norm=PowerNorm(0.5))
        ax.set_title(f"MNIST, {title}", fontsize=9)
        ax.set_xlabel("client")
        ax.set_ylabel("label")
    femnist = SHARED / "femnist" / "femnist_300writers.npz"
    if femnist.exists():
        fem = load_source(DataSpec(source="arrays", root=str(femnist), group_column="writer", cache_dir=None))
        fed = partition_data(fem, PartitionSpec(scheme="natural", num_clients=40, min_samples=1, cache_dir=None), 0)
        axes[-1].imshow(fed.label_counts().T, aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=PowerNorm(0.5))
        axes[-1].set_title("FEMNIST natural (writers)", fontsize=9)
        axes[-1].set_xlabel("client (writer)")
    fig.suptitle("samples per label and client (sqrt colour scale), first 40 clients", fontsize=9)
    from partitions.stats import plot_label_heatmap

    example = PartitionSpec(scheme="dirichlet", num_clients=100, alpha=0.1, unseen_fraction=0.1, cache_dir=None)
    plot_label_heatmap(partition_data(data, example, seed=0), OUT / "partition_cli_heatmap.png")
    fig.tight_layout()
    fig.savefig(OUT / "partition_heatmaps.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
