"""How skewed is our CIFAR-10 Dir(alpha) partition compared with FL-bench's (the authors' partitioner)?

Ours: the harness's dirichlet scheme with FL-bench's size rule and a constructive minimum-size repair.
FL-bench's (data/utils/schemes/dirichlet.py, re-implemented here from its description): per class, shuffle,
draw Dirichlet proportions, zero them for clients already above N/K samples, split; REDRAW THE WHOLE PARTITION
until every client has at least `min_samples`. Rejection sampling keeps only draws where no client is tiny,
which biases towards less skewed partitions. Reported per partition: mean number of classes a client holds
(>= 1% of its samples), mean per-client label entropy (bits), and the mean share of each client's majority
class (the accuracy of always predicting it: a floor for what a personalized model can reach, and a ceiling
hint for how hard the clients are for one global model).

    python docs/reproduction/partition_skew.py --alpha 0.1      # prints a Markdown table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def flbench_dirichlet(y: np.ndarray, clients: int, alpha: float, least: int, seed: int) -> list[np.ndarray]:
    gen = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    tries = 0
    while True:
        tries += 1
        parts = [np.zeros(0, dtype=np.int64) for _ in range(clients)]
        for c in sorted(by_class):
            idx = gen.permutation(by_class[c])
            p = gen.dirichlet(np.repeat(alpha, clients))
            p = np.array([pk * (len(parts[k]) < len(y) / clients) for k, pk in enumerate(p)])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            parts = [np.concatenate([a, b]) for a, b in zip(parts, np.split(idx, cuts), strict=True)]
        if min(len(a) for a in parts) >= least:
            return parts, tries


def stats(y: np.ndarray, parts: list[np.ndarray], classes: int) -> dict[str, float]:
    counts = np.stack([np.bincount(y[a], minlength=classes) for a in parts]).astype(np.float64)
    share = counts / counts.sum(1, keepdims=True)
    held = (share >= 0.01).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(share > 0, share * np.log2(share), 0.0), axis=1)
    return {"classes_held": held.mean(), "entropy_bits": entropy.mean(), "majority_share": share.max(1).mean(),
            "min_size": counts.sum(1).min(), "max_size": counts.sum(1).max()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    from harness.config import load_config
    from partitions import build_federated_dataset

    spec = ROOT / "runs" / "paper" / f"cifar10_dir{args.alpha}.yaml"
    cfg = load_config(spec, ["data.source=arrays", "data.root=../shared/data/cifar10/cifar10_jpeg_blob.npz",
                             "data.download=false"])
    rows = []
    for seed in range(42, 42 + args.seeds):
        fed = build_federated_dataset(cfg.data, cfg.partition, seed)
        y = fed.y
        ours = [np.concatenate([fed.split_of(c, s) for s in ("train", "test")]) for c in range(fed.num_clients)]
        theirs, tries = flbench_dirichlet(y, 100, args.alpha, 10, seed)
        rows.append(("ours (harness)", seed, stats(y, ours, 10), 1))
        rows.append(("FL-bench rule (redraw)", seed, stats(y, theirs, 10), tries))
    print(f"CIFAR-10, 100 clients, Dirichlet({args.alpha}), min 10 samples; seeds {42}-{41 + args.seeds}\n")
    print("| partitioner | seed | classes held (>=1%) | label entropy (bits) | majority-class share | "
          "client sizes min-max | draws until accepted |")
    print("|---|---|---|---|---|---|---|")
    for name, seed, s, tries in rows:
        print(f"| {name} | {seed} | {s['classes_held']:.2f} | {s['entropy_bits']:.3f} | {s['majority_share']:.3f} | "
              f"{int(s['min_size'])}-{int(s['max_size'])} | {tries} |")
    for name in ("ours (harness)", "FL-bench rule (redraw)"):
        sel = [s for n, _, s, _ in rows if n == name]
        print(f"| **{name}, mean** | | {np.mean([s['classes_held'] for s in sel]):.2f} | "
              f"{np.mean([s['entropy_bits'] for s in sel]):.3f} | {np.mean([s['majority_share'] for s in sel]):.3f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
