"""How a Tune trial should run its clients, measured: `fedharness tune`'s search of one algorithm with
every trial's run in the trial's own process (inprocess), the same with Tune reusing finished trials'
processes (reuse), and each trial starting its own Ray worker actor (actors). Same trials, same work (no
early stopping), a fresh local Ray cluster each; docs/tuning.md quotes the result.

    PYTHONPATH=. python bench/bench_tune_modes.py [--trials 6] [--rounds 6] [--modes inprocess,reuse,actors]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from harness.tuning.runner import run_tune
from harness.tuning.spec import load_tune


def spec(storage: str, mode: str, trials: int, rounds: int) -> dict:
    return {
        "name": f"bench-{mode}", "base": "runs/quickstart.yaml",
        "overrides": [f"rounds={rounds}", "eval_every=2", "partition.val_fraction=0.2", "workers.num_workers=1",
                      "tracking.enabled=false", f"checkpoint_dir={storage}/ckpt"],
        "algorithms": ["fedavg"], "budget": {"trials": trials}, "scheduler": {"kind": "none"},
        "space": {"all": {"train.local_epochs": ["choice", [2]]}}, "parallel_trials": 2,
        "trial_workers": "actors" if mode == "actors" else "inprocess", "reuse_actors": mode == "reuse",
        "storage": storage,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--modes", default="inprocess,reuse,actors")
    args = p.parse_args()
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            tree = spec(tmp, mode, args.trials, args.rounds)
            tree["base"] = str(__import__("pathlib").Path(__file__).resolve().parents[1] / tree["base"])
            t = load_tune(tree)
            t0 = time.perf_counter()
            run_tune(t, progress=False, search_only=True)
            print(f"{mode:>10}: {args.trials} trials x {args.rounds} rounds, 2 at once: "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
