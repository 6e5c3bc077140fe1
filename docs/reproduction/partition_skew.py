"""How skewed is the harness's own CIFAR-10 Dir(alpha) partition compared with FL-bench's (the authors')?

Ours: the harness's dirichlet scheme with FL-bench's old size rule and a constructive minimum-size repair (the
first reproduction study, runs/paper/study_cifar10_dir0.1_own_partition.yaml). FL-bench's: the flbench_dirichlet
scheme, FL-bench's own partition draw for draw (seed 42 is the authors' partition: tests/test_flbench_partition.py).
Reported per partition: mean number of classes a client holds (>= 1% of its samples), mean per-client label entropy
(bits), and the mean share of each client's majority class (the accuracy of always predicting it: a floor for what
a personalized model can reach, and a hint of how hard the clients are for one global model).

    python docs/reproduction/partition_skew.py --alpha 0.1      # prints a Markdown table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


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
    cfg_overrides = ["data.source=arrays", "data.root=../shared/data/cifar10/cifar10_jpeg_blob.npz",
                     "data.download=false"]
    own = ["partition.scheme=dirichlet", "partition.dirichlet_balance=true"]
    rows = []
    for seed in range(42, 42 + args.seeds):
        theirs = [f"partition.flbench_seed={seed}"]
        for name, extra in (("ours (harness)", own), ("FL-bench (flbench_dirichlet)", theirs)):
            c = load_config(spec, [*cfg_overrides, *extra])
            fed = build_federated_dataset(c.data, c.partition, seed)
            clients = [np.concatenate([fed.split_of(k, s) for s in ("train", "test")]) for k in range(fed.num_clients)]
            rows.append((name, seed, stats(fed.y, clients, 10), fed.meta.get("flbench_draws", 1)))
    print(f"CIFAR-10, 100 clients, Dirichlet({args.alpha}), min 10 samples; seeds {42}-{41 + args.seeds}\n")
    print("| partitioner | seed | classes held (>=1%) | label entropy (bits) | majority-class share | "
          "client sizes min-max | draws until accepted |")
    print("|---|---|---|---|---|---|---|")
    for name, seed, s, tries in rows:
        print(f"| {name} | {seed} | {s['classes_held']:.2f} | {s['entropy_bits']:.3f} | {s['majority_share']:.3f} | "
              f"{int(s['min_size'])}-{int(s['max_size'])} | {tries} |")
    for name in ("ours (harness)", "FL-bench (flbench_dirichlet)"):
        sel = [s for n, _, s, _ in rows if n == name]
        means = {k: np.mean([s[k] for s in sel]) for k in ("classes_held", "entropy_bits", "majority_share")}
        print(f"| **{name}, mean** | | {means['classes_held']:.2f} | {means['entropy_bits']:.3f} | "
              f"{means['majority_share']:.3f} | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
