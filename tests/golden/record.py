"""Record the golden per-round metrics that tests/test_golden.py compares bit for bit.

The numbers are recorded with the code as it was before the architecture redesign (commit 31dad36), so
that the redesigned engine is held to exactly what the old one computed, once per CPU capability
(float32 reductions differ in their last bits between instruction sets; tests/test_golden.py):

    git worktree add /tmp/pre 31dad36 && cp tests/golden/record.py tests/golden/__init__.py /tmp/pre/tests/golden/
    cd /tmp/pre && HF_HUB_OFFLINE=1 PYTHONPATH=. python -m tests.golden.record   # needs ../shared beside /tmp/pre
    cp /tmp/pre/tests/golden/<capability>/*.json <this repository>/tests/golden/<capability>/

The first recording (tests/golden/*.json) was made on an earlier machine; tests/golden/AVX512/ on an AVX512
machine on 2026-12-07, both at commit 31dad36.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ALGORITHMS = ["fedavg", "fedprox", "local", "fedper", "fedrep", "lgfedavg", "fedbabu", "ditto", "apfl", "fedala",
              "fedrod", "fedobp"]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_jpeg_blob.npz"


def quickstart_overrides(algorithm: str, tmp: str) -> list[str]:
    """The quickstart spec, shortened to 6 rounds, in-process, nothing tracked."""
    return [f"algorithm.name={algorithm}", "rounds=6", "eval_every=3", "workers.use_ray=false",
            "tracking.enabled=false", f"checkpoint_dir={tmp}/ckpt", f"partition.cache_dir={tmp}/cache",
            "eval_sampled=true"]


#: the paper spec's partition and sampling when the golden numbers were recorded (the spec now uses FL-bench's own)
RECORDED_PARTITION = ["partition.scheme=dirichlet", "partition.dirichlet_balance=true", "sampling=uniform"]


def cifar_overrides(tmp: str) -> list[str]:
    """FedOBP on the CIFAR-10 copy: the paper spec (avgcnn, 5 epochs -> 1), 20 clients of 3,000 images."""
    return [*RECORDED_PARTITION, "data.source=arrays", f"data.root={CIFAR}", "data.download=false",
            "data.max_samples=3000",
            "partition.num_clients=20", "rounds=3", "eval_every=3", "train.local_epochs=1", "workers.use_ray=false",
            "tracking.enabled=false", f"checkpoint_dir={tmp}/ckpt", f"partition.cache_dir={tmp}/cache",
            "algorithm.name=fedobp", "algorithm.q=0.999", "algorithm.ema=true", "algorithm.ema_alpha=0.1"]


def cifar_small_overrides(algorithm: str, tmp: str) -> list[str]:
    """Every algorithm on the avgcnn (conv layers train channels-last on the CPU): 10 clients of 1,200 images."""
    return [*RECORDED_PARTITION, "data.source=arrays", f"data.root={CIFAR}", "data.download=false",
            "data.max_samples=1200",
            "partition.num_clients=10", "rounds=2", "eval_every=2", "train.local_epochs=1", "workers.use_ray=false",
            "tracking.enabled=false", f"checkpoint_dir={tmp}/ckpt", f"partition.cache_dir={tmp}/cache",
            f"algorithm.name={algorithm}", "join_ratio=0.3", "eval_sampled=true"]


def history(result) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "wall_round_time"} for h in result.history]


def main() -> int:
    import tempfile

    import torch

    out_dir = HERE / torch.backends.cpu.get_cpu_capability()
    out_dir.mkdir(exist_ok=True)

    from harness.config import load_config
    from harness.engine import run

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:
            cfg = load_config(ROOT / "runs" / "quickstart.yaml", quickstart_overrides(algorithm, tmp))
            out[algorithm] = history(run(cfg, progress=False))
            print(algorithm, out[algorithm][-1]["personal_acc"], flush=True)
        (out_dir / "quickstart.json").write_text(json.dumps(out, indent=1, allow_nan=True))
        cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_overrides(tmp))
        cifar = history(run(cfg, progress=False))
        print("cifar10 fedobp", cifar[-1]["personal_acc"], flush=True)
        (out_dir / "cifar10_fedobp.json").write_text(json.dumps(cifar, indent=1, allow_nan=True))
        small = {}
        for algorithm in ALGORITHMS:
            cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_small_overrides(algorithm, tmp))
            small[algorithm] = history(run(cfg, progress=False))
            print("cifar10", algorithm, small[algorithm][-1]["personal_acc"], flush=True)
        (out_dir / "cifar10_all.json").write_text(json.dumps(small, indent=1, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
