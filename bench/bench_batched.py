"""Batched multi-client training vs one client at a time vs the per-client compute limit, in one
interleaved run.

Workloads: FEMNIST by writer (the 300 real writers of ../shared/data/femnist, natural partition, their
own sizes: 2-320 training images, median 150), 100 clients a round, 1 local epoch, batch 32, FedAvg, SGD
lr 0.01 momentum 0.7; an MLP (hidden 128) and, with --lenet5, LeNet-5 (docs/examples/my_lenet5.py, conv).

Ways, each repetition running all of them one after the other (so load from other jobs hits all alike):

* harness per-client - the real engine, train.batched=off, W Ray actors x 1 CPU, torch threads 1,
                       tracking off, no evaluation; a round = start of a round to the start of the next;
* harness batched    - the same with train.batched=on (cohorts of train.cohort_size clients: each --cohort),
                       W actors,
                       and with 1 actor;
* plain 1 / 2 procs  - the per-client compute limit: a plain PyTorch loop training the round's clients
                       one after another (bench_throughput's loop: same data order, SGD with momentum),
                       in 1 process, and in 2 processes each taking half of the clients balanced by size
                       (round = the slower process); no communication, no aggregation.

Also reported per harness run: seconds from `open_run` to the first round's start with Ray already up
(data, algorithm, actors; ray.init is measured by bench_startup.py).

Run:  .venv/bin/python bench/bench_batched.py [--lenet5] [--repeats 3] [--rounds 6] [--cohort 16 --cohort 50]
Results: bench/results/bench_batched.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_throughput as bt  # noqa: E402
import common  # noqa: E402

FEMNIST = common.ROOT.parent / "shared" / "data" / "femnist" / "femnist_300writers.npz"
LENET5 = str(common.ROOT / "docs" / "examples" / "my_lenet5.py")
WORKLOADS = {
    "femnist-mlp": {"model": "mlp", "options": {"hidden": 128}, "plugins": []},
    "femnist-lenet5": {"model": "my_lenet5", "options": {}, "plugins": [LENET5]},
}


def femnist_config(tmp: Path, w: dict, rounds: int, workers: int, batched: str, cohort: int, *,
                   root: Path = FEMNIST, num_clients: int = 300, per_round: int = 100):
    """FEMNIST by writer (`root`: the shared file, or a copy with more writers); evaluation after the last round."""
    from harness.config import validate

    return validate({
        "name": "bench-batched", "seed": 0, "rounds": rounds, "clients_per_round": per_round, "eval_every": 10**6,
        "device": "cpu", "plugins": w["plugins"],
        "data": {"source": "arrays", "root": str(root), "group_column": "writer", "invert": True},
        "partition": {"scheme": "natural", "num_clients": num_clients, "min_samples": 2, "cache_dir": None},
        "model": {"name": w["model"], "options": w["options"]},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.7, "batched": batched,
                  "cohort_size": cohort},
        "algorithm": {"name": "fedavg"},
        "workers": {"num_workers": workers, "num_cpus": 1.0, "use_ray": True, "warm_start": False},
        "tracking": {"enabled": False},
        "checkpoint_dir": str(tmp / "ckpt"),
    })


def run_harness(cfg) -> dict[str, Any]:
    t0 = time.perf_counter()
    engine, timer = common.timed_engine(cfg, skip_eval=True)
    timed = common.run_timed(engine, timer)
    engine.discard_checkpoint()
    return {"round_s": timed["round_s"][1:], "startup_s": timer.round_starts[0] - t0}


PLAIN = ["plain 1 proc", "plain 2 procs"]


def harness_ways(cohorts: list[int]) -> list[str]:
    """The harness runs: one by one, batched with each cohort size, and batched on 1 worker (the first size)."""
    return (["harness per-client"] + [f"harness batched, cohort {c}" for c in cohorts]
            + [f"harness batched 1 worker, cohort {cohorts[0]}"])
COLUMNS = [("workload", "workload"), ("way", "way"), ("round_s", "round s (median)"), ("ups", "updates/s"),
           ("vs_plain2", "x plain 2 procs"), ("vs_per_client", "x harness per-client"),
           ("startup_s", "open_run to first round s")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lenet5", action="store_true", help="also the LeNet-5 workload (conv: batched=on, measured)")
    ap.add_argument("--rounds", type=int, default=6, help="measured rounds per run (after one warm-up round)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cohort", type=int, action="append",
                    help="train.cohort_size of a batched run (repeat for several; default 16 and 50)")
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)
    if not FEMNIST.exists():
        print(f"FEMNIST not found at {FEMNIST}", file=sys.stderr)
        return 2
    names = ["femnist-mlp"] + (["femnist-lenet5"] if args.lenet5 else [])
    args.cohort = args.cohort or [16, 50]
    ways = harness_ways(args.cohort) + PLAIN
    common.torch_threads(1)
    common.init_ray(args.workers)
    info = common.machine_info()
    from harness.engine.worker import build_algorithm
    from partitions import build_federated_dataset

    measured = args.rounds + 2
    raw: dict[str, dict[str, list[float]]] = {n: {w: [] for w in ways} for n in names}
    startup: dict[str, dict[str, list[float]]] = {n: {w: [] for w in harness_ways(args.cohort)} for n in names}
    ctx = mp.get_context("spawn")
    pools: dict[tuple[str, int], Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batched-") as tmpdir:
        tmp = Path(tmpdir)
        prepared = {}
        for name in names:
            w = WORKLOADS[name]
            first = args.cohort[0]
            cfgs = {"harness per-client": femnist_config(tmp / name, w, measured, args.workers, "off", first)}
            for c in args.cohort:
                cfgs[f"harness batched, cohort {c}"] = femnist_config(tmp / name, w, measured, args.workers, "on", c)
            cfgs[f"harness batched 1 worker, cohort {first}"] = femnist_config(tmp / name, w, measured, 1, "on", first)
            cfg = cfgs["harness per-client"]
            data = bt.same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
            algo, _, vec = build_algorithm(cfg, data)
            prepared[name] = (cfgs, data, algo, vec, bt.sampled_clients(cfg, data, measured))
        try:
            for rep in range(args.repeats):
                for name in names:
                    cfgs, data, algo, vec, rounds = prepared[name]
                    for way, cfg in cfgs.items():
                        print(f"[{rep + 1}/{args.repeats}] {name}: {way}", flush=True)
                        got = run_harness(cfg)
                        raw[name][way] += got["round_s"]
                        startup[name][way].append(got["startup_s"])
                    for procs in (1, 2):
                        print(f"[{rep + 1}/{args.repeats}] {name}: plain {procs}", flush=True)
                        key = (name, procs)
                        if key not in pools:
                            cfg_json = json.dumps(cfgs["harness per-client"].model_dump(mode="json"))
                            pools[key] = ctx.Pool(procs, bt._plain_init, (cfg_json,))
                        way = f"plain {procs} proc" + ("s" if procs > 1 else "")
                        raw[name][way] += bt.run_compute(cfgs["harness per-client"], pools[key], rounds, data, vec,
                                                         procs)["round_s"]
        finally:
            for pool in pools.values():
                pool.terminate()
    import ray

    ray.shutdown()
    rows = []
    for name in names:
        per_rep = {way: bt.per_rep(raw[name][way], args.repeats) for way in ways}
        for way in ways:
            med = common.median(raw[name][way])
            rows.append({
                "workload": name, "way": way, "round_s": med, "ups": 100 / med,
                # ratios within each repetition, then their median
                "vs_plain2": common.median(p / h for h, p in zip(per_rep[way], per_rep["plain 2 procs"], strict=True)),
                "vs_per_client": common.median(p / h for h, p in zip(per_rep[way], per_rep["harness per-client"],
                                                                      strict=True)),
                "startup_s": common.median(startup[name][way]) if way in startup[name] else float("nan"),
                "round_s_all": raw[name][way],
            })
        common.print_table(name, [r for r in rows if r["workload"] == name], COLUMNS)
    notes = [
        "x plain 2 procs / x harness per-client: speed relative to that way (its round time / this way's), the "
        "median over repetitions of the ratio within one repetition; > 1 = faster.",
        f"{args.repeats} interleaved repetition(s) x {args.rounds} measured rounds, the first round of each run "
        "dropped; FEMNIST by writer, 300 clients, 100 a round, 1 epoch, batch 32, FedAvg.",
        f"batched: train.batched=on, train.cohort_size as named; {args.workers} Ray actor(s) x 1 CPU unless "
        "'1 worker'.",
        "plain: bench_throughput's loop (one client after another), balanced halves for 2 processes.",
        "the machine is shared with other jobs: read the ratios, measured within one run.",
    ]
    settings = {"rounds": args.rounds, "repeats": args.repeats, "workers": args.workers, "cohort": args.cohort}
    jpath, mpath = common.write_results("bench_batched", args.out, title="Batched multi-client training",
                                        machine=info, settings=settings,
                                        tables=[("Round time by way", rows, COLUMNS)], notes=notes)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
