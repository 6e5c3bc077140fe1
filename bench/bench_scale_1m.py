"""Scale to 1,000,000 clients: FedAvg and FedPer over a virtual FEMNIST population, through the real engine.

Each setting is one run in a fresh Python process (clean memory readings): N virtual clients
(`partition.virtual_clients`, partitions/virtual.py) over FEMNIST's 300 real writers
(../shared/data/femnist, the natural by-writer partition: each virtual client has a real writer's
size and label mix, resampled from (seed, client id)), K = 1,000 clients per round, MLP, 1 local
epoch, 2 Ray workers x 1 CPU, disk client-state store, tracking off. The last round evaluates a
fixed seeded sample of `eval_clients` clients (evaluating all N is refused above 10,000).

FedAvg keeps no per-client state; FedPer keeps each participant's classifier head (its state is
bounded by the participants, not by N). A sampler polls the RSS/PSS of the driver and of every
Ray process. What is measured: partition build time and the driver memory it adds, driver and
worker peaks, the store's disk use and files, round time (indicative on a shared machine).

Run:  nice -n 5 .venv/bin/python bench/bench_scale_1m.py            (~10-15 min)
      .venv/bin/python bench/bench_scale_1m.py --quick              (smoke: N=10,000 / 20,000, K=50, in process)
Results: bench/results/bench_scale_1m.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FEMNIST = common.ROOT.parent / "shared" / "data" / "femnist"


def config(p: dict):
    from harness.config import validate

    work = Path(p["work"])
    return validate({
        "name": "bench-1m", "seed": 0, "rounds": p["rounds"], "clients_per_round": p["k"], "eval_every": 10**6,
        "eval_clients": p["eval_clients"], "device": "cpu",
        "data": {"source": "femnist", "root": str(FEMNIST), "invert": True},
        "partition": {"scheme": "natural", "num_clients": 300, "min_samples": 2, "virtual_clients": p["n"],
                      "cache_dir": None},
        "model": {"name": "mlp", "options": {"hidden": p["hidden"]}},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.0},
        "algorithm": {"name": p["algorithm"]},
        "workers": {"num_workers": 2, "num_cpus": 1.0, "use_ray": not p["in_process"], "warm_start": False},
        "store": {"backend": "disk", "path": str(work / "store")},
        "tracking": {"enabled": False},
        "checkpoint_dir": str(work / "ckpt"),
    })


def child(p: dict) -> dict:
    """One (algorithm, N) setting: build, run, measure."""
    from partitions import build_federated_dataset

    if not p["in_process"]:
        common.init_ray(2)
    cfg = config(p)
    gc.collect()
    rss0 = common.memory_snapshot()["driver_rss"]
    t = time.perf_counter()
    fed = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    build_s = time.perf_counter() - t
    virtual_mib = (fed.base_of.nbytes + fed.train_clients.nbytes) / 2**20
    del fed
    gc.collect()
    t = time.perf_counter()
    engine, timer = common.timed_engine(cfg)
    open_s = time.perf_counter() - t
    clock = engine.clock.p
    profiles_mib = sum(a.nbytes for a in (clock.seconds_per_sample, clock.upload_bps, clock.download_bps,
                                          clock.availability, clock.max_steps, clock.tier)) / 2**20
    start = common.memory_snapshot()
    with common.MemorySampler() as mem:
        timed = common.run_timed(engine, timer)
    result = timed["result"]
    store = common.disk_usage(Path(p["work"]) / "store")
    participants = len(set(result.client_log["client"].astype(int))) if result.client_log is not None else 0
    engine.discard_checkpoint()
    rounds = timed["round_s"][1:]  # the first round warms the workers up; the last one (evaluation) has no end mark
    return {
        "algorithm": p["algorithm"], "clients": p["n"], "per_round": p["k"], "partition_build_s": build_s,
        "open_run_s": open_s, "virtual_arrays_mib": virtual_mib, "device_profiles_mib": profiles_mib,
        "driver_rss_before_build_mib": rss0, "driver_rss_start_mib": start["driver_rss"],
        **{f"peak_{key}_mib": v for key, v in mem.peak.items()},
        "round_s": common.median(rounds), "round_times_s": timed["round_s"],
        "train_s": common.median(timer.train_s[1:-1]), "eval_s": timer.eval_s[-1] if timer.eval_s else float("nan"),
        "eval_clients": p["eval_clients"], "participants": participants,
        "store_files": store["files"], "store_disk_mib": store["disk_allocated_mib"],
        "store_apparent_mib": store["disk_apparent_mib"],
        "final_acc": result.final.get("personal_acc", float("nan")),
    }


def run_child(params: dict, in_process: bool) -> dict:
    if in_process:
        return child(params)
    out = Path(params["work"]) / "row.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({**params, "out": str(out)})]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"child {params} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    return json.loads(out.read_text())


COLUMNS = [
    ("algorithm", "algorithm"), ("clients", "clients N"), ("per_round", "clients/round K"),
    ("partition_build_s", "partition build s"), ("virtual_arrays_mib", "virtual arrays MiB"),
    ("device_profiles_mib", "device profiles MiB"), ("driver_rss_start_mib", "driver RSS at start MiB"),
    ("peak_driver_rss_mib", "peak driver RSS MiB"), ("peak_workers_rss_mib", "peak workers RSS MiB"),
    ("peak_total_pss_mib", "peak total PSS MiB"), ("participants", "participants"),
    ("store_files", "state files"), ("store_disk_mib", "store disk (du) MiB"), ("round_s", "round s"),
    ("eval_s", "evaluate s"), ("final_acc", "accuracy (eval sample)"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--algorithms", nargs="+", default=["fedavg", "fedper"])
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run: 1 warm-up, measured, the last evaluates")
    ap.add_argument("--eval-clients", type=int, default=1000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--in-process", action="store_true", help="no Ray, no child processes (memory readings mixed)")
    ap.add_argument("--workdir", default=str(common.ROOT / "bench" / "out" / "scale_1m"))
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return common.run_child(child, json.loads(args.child))
    if args.quick:
        args.clients, args.per_round, args.rounds, args.eval_clients = [10_000, 20_000], 50, 3, 50
        args.hidden, args.in_process = 32, True
    if not (FEMNIST / "femnist_300writers.npz").exists():
        print(f"FEMNIST not found under {FEMNIST}", file=sys.stderr)
        return 2
    common.torch_threads(1)
    info = common.machine_info()
    rows = []
    for algorithm in args.algorithms:
        for n in args.clients:
            work = Path(args.workdir) / f"{algorithm}-{n}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            params = {"work": str(work), "n": n, "k": args.per_round, "rounds": args.rounds, "algorithm": algorithm,
                      "eval_clients": args.eval_clients, "hidden": args.hidden, "in_process": args.in_process}
            rows.append(run_child(params, args.in_process))
            common.print_table(f"{algorithm} N={n:,}", rows[-1:], COLUMNS)
            shutil.rmtree(work, ignore_errors=True)
    notes = [
        "Data: FEMNIST, 300 real writers (../shared/data/femnist), natural by-writer base partition, 75/25 local "
        "split; N virtual clients (partition.virtual_clients), each a resample of one writer's splits drawn from "
        "(seed, client id): per-client sizes 3-356 examples, median 167, as the writers'.",
        f"mlp hidden={args.hidden}, 1 local epoch, batch 32, SGD lr 0.05; K={args.per_round} clients per round, "
        f"{args.rounds} rounds; the last round evaluates eval_clients={args.eval_clients} clients (a fixed seeded "
        f"sample); 2 Ray workers x 1 CPU; disk store; tracking off.",
        "virtual arrays = base_of (int32) + train_clients (int64): all the population costs beyond the base "
        "partition; device profiles = the virtual clock's six per-client vectors (float64/int64).",
        "round s = median over the rounds after the first (warm-up), before the evaluating last round: sampling, "
        "state fetch, training, aggregation, state commit, checkpoint. Taken on a shared 2-core machine: "
        "indicative only; memory and disk do not depend on the load.",
        "RSS counts Ray's shared object-store pages once per process that maps them; total PSS splits them.",
    ]
    settings = {"quick": args.quick, "clients": args.clients, "per_round": args.per_round, "rounds": args.rounds,
                "eval_clients": args.eval_clients, "hidden": args.hidden, "in_process": args.in_process}
    jpath, mpath = common.write_results(
        "bench_scale_1m", args.out, title="Scale: 1,000,000 virtual clients (FedAvg, FedPer)", machine=info,
        settings=settings, tables=[("Virtual FEMNIST population vs number of clients", rows, COLUMNS)], notes=notes)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
