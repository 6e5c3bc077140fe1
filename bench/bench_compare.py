"""Throughput against Flower 1.42 and pfl 0.6, in one interleaved run (issue 14).

Per workload, each repetition runs every way one after the other (so load from other jobs hits all alike):

* harness per-client / batched - the real engine in a fresh process (compare_runner.harness_main), 2 Ray
  actors x 1 CPU, torch threads 1, tracking off, memory store; batched = train.batched on (cohorts of 16),
  only for models without convolutions (where `auto` turns it on); a round = start of one round to the next;
* plain 1 / 2 procs - the per-client compute limit, bench_throughput's plain loop (same data order, SGD with
  momentum), the round's clients one after another in 1 process / split longest-first over 2 processes;
* Flower       - flwr.simulation.run_simulation (Ray backend, 2 actors x 1 CPU, FedAvg), the client trains
  with the harness's LocalTrainer on the client the harness sampled (bench_throughput.flower_main);
* pfl          - pfl 0.6's PyTorch simulation: FederatedAveraging, PyTorchModel, SimulatedBackend, 2 ranks
  via torchrun (pfl's multi-process mode), same model, initial weights, clients, data order, local SGD
  (compare_pfl.py).

Every framework way starts in its own process: start-up = its launch to its first round's start (imports,
Ray or torch.distributed, data, actors); evaluation = one pass over every client's test split (harness:
after the last round; Flower: an evaluate round after the last round; pfl: its federated evaluation of the
val population, at iteration 0); peak RSS of the driver, the workers and Ray's own processes
(compare_runner). The first round of every run is dropped, and the last (it holds the evaluation).

Workloads: femnist-mlp / femnist-lenet5 = FEMNIST by writer (300 writers of ../shared/data/femnist, natural
partition), 100 clients a round, 1 epoch, batch 32; femnist1k-mlp = 1,000 clients a round of FEMNIST-size
clients: the 300 writers' data copied 4 times under new writer ids (1,200 clients, natural sizes);
cifar10-avgcnn = the paper setting (runs/paper/cifar10_dir0.1.yaml: 100 clients, Dirichlet 0.1, 10 a round,
5 local epochs, batch 32, avgcnn); quick-mlp = sklearn digits, for the smoke test.

Bench environment (once; Flower pins protobuf < 7, pfl is no project dependency):
    python3.11 -m venv .venv-bench
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-bench/lib/python3.11/site-packages/main.pth
    .venv-bench/bin/pip install "flwr==1.42.*" "pfl==0.6.0" psutil
  pip keeps the main venv's torch 2.14.1, numpy and Ray (the .pth makes them visible) and adds flwr 1.42.0,
  pfl 0.6.0, protobuf 6.33 and their small dependencies into .venv-bench only.
Run:  nice -n 5 .venv/bin/python bench/bench_compare.py [--workloads ...] [--repeats 2]
Results: bench/results/bench_compare.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_batched as bb  # noqa: E402
import bench_throughput as bt  # noqa: E402
import common  # noqa: E402
import compare_runner as cr  # noqa: E402

BENCH_PY = bt.FLOWER_PY
CIFAR10 = common.ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_jpeg_blob.npz"
PAPER_CIFAR = common.ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml"
# measured rounds per run (one warm-up round before, one evaluating round after)
WORKLOADS = {"femnist-mlp": 4, "femnist-lenet5": 4, "femnist1k-mlp": 2, "cifar10-avgcnn": 2, "quick-mlp": 2}
WAYS = ["harness per-client", "harness batched", "plain 1 proc", "plain 2 procs", "Flower", "pfl"]
RAY_NICE_WAY = "harness per-client, Ray's worker niceness"  # with --worker-niceness both


def tiled_femnist(tmp: Path, copies: int = 4) -> Path:
    """The shared FEMNIST file with its writers copied `copies` times under new ids (x, y, writer only)."""
    src, out = np.load(bb.FEMNIST, allow_pickle=False), tmp / f"femnist_x{copies}.npz"
    arrays = {}
    for split in ("train", "test"):
        w = src[f"writer_{split}"].astype(np.int32)
        arrays[f"x_{split}"] = np.concatenate([src[f"x_{split}"]] * copies)
        arrays[f"y_{split}"] = np.concatenate([src[f"y_{split}"]] * copies)
        arrays[f"writer_{split}"] = np.concatenate([w + i * (int(w.max()) + 1) for i in range(copies)])
    np.savez(out, **arrays)
    return out


def with_train(cfg, **train):
    from harness.config import validate

    tree = cfg.model_dump(mode="json")
    tree["train"].update(train)
    return validate(tree)


def make_config(name: str, tmp: Path, rounds: int, workers: int):
    """The per-client harness config of a workload (batched variants: with_train(cfg, batched="on"))."""
    from harness.config import validate

    tmp.mkdir(parents=True, exist_ok=True)
    if name == "quick-mlp":
        return common.run_config(tmp, num_clients=40, clients_per_round=10, rounds=rounds, model="mlp",
                                 model_options={"hidden": 32}, data_source="digits", workers=workers,
                                 batch_size=16, min_samples=10)
    if name.startswith("femnist"):
        model = bb.WORKLOADS["femnist-lenet5" if "lenet5" in name else "femnist-mlp"]
        if name == "femnist1k-mlp":
            return bb.femnist_config(tmp, model, rounds, workers, "off", 16, root=tiled_femnist(tmp),
                                     num_clients=1200, per_round=1000)
        return bb.femnist_config(tmp, model, rounds, workers, "off", 16)
    import yaml

    tree = yaml.safe_load(PAPER_CIFAR.read_text())
    tree.update(name="bench-compare", rounds=rounds, eval_every=10**6, device="cpu", checkpoint_dir=str(tmp / "ckpt"),
                tracking={"enabled": False}, algorithm={"name": "fedavg"},
                workers={"num_workers": workers, "num_cpus": 1.0, "use_ray": True, "warm_start": False})
    tree["data"] = {"source": "arrays", "root": str(CIFAR10)}
    tree["partition"]["cache_dir"] = None
    return validate(tree)


def pairs(ts: list[float]) -> list[float]:
    return [b - a for a, b in zip(ts, ts[1:], strict=False)]


# ----- one run of each way ---------------------------------------------------------------------------------
def ray_env(env: dict[str, str], same_niceness: bool) -> dict[str, str]:
    """Ray's own default starts its workers at the driver's niceness + 15 (lower priority); 0 keeps them at the
    driver's, the level of the plain loop and of pfl's ranks (harness.engine.cluster.start_local does so too)."""
    return dict(env, RAY_worker_niceness="0" if same_niceness else "15")  # 15: Ray's own default


def run_harness(cfg, tmp: Path, workers: int, same_niceness: bool = True) -> dict[str, Any]:
    argv, out = cr.harness_job(cfg, tmp, workers)
    got = cr.monitored(argv, ray_env(cr.bench_env(), same_niceness), tmp / "harness.log")
    res = cr.checked(got, out, tmp / "harness.log", "harness")
    measured = slice(1, len(res["starts"]) - 1)  # the rounds in round_s
    return {"round_s": pairs(res["starts"])[1:], "startup_s": res["starts"][0] - got["launch"],
            "first_round_s": pairs(res["starts"])[0], "eval_s": res["eval_s"], "peak_mib": got["peak_mib"],
            "phases": {k: v[measured] for k, v in res.get("phases", {}).items()}}


def run_flower(cfg, tmp: Path, rounds, vec, spec, workers: int, same_niceness: bool = True) -> dict[str, Any]:
    argv, env, out = bt.flower_job(cfg, tmp, rounds, vec, spec, workers, evaluate=True)
    got = cr.monitored(argv, ray_env(env, same_niceness), tmp / "flower.log")
    res = cr.checked(got, out, tmp / "flower.log", "Flower")
    return {"round_s": pairs(res["starts"])[1:-1], "startup_s": res["starts"][0] - got["launch"],
            "first_round_s": pairs(res["starts"])[0], "eval_s": res["eval_s"], "peak_mib": got["peak_mib"]}


def run_pfl(cfg, tmp: Path, rounds, vec, procs: int) -> dict[str, Any]:
    paths = {k: tmp / f"pfl_{k}" for k in ("cfg.json", "init.npy", "out.json", "spec.json")}
    paths["cfg.json"].write_text(json.dumps(cfg.model_dump(mode="json")))
    np.save(paths["init.npy"], vec)
    paths["spec.json"].write_text(json.dumps({"cfg": str(paths["cfg.json"]), "init": str(paths["init.npy"]),
                                              "out": str(paths["out.json"]), "rounds": rounds, "evaluate": True}))
    script = str(common.ROOT / "bench" / "compare_pfl.py")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else []
    env = dict(cr.bench_env(), OMP_NUM_THREADS="1", PFL_PYTORCH_DEVICE="cpu")
    got = cr.monitored([str(BENCH_PY), *launcher, script, str(paths["spec.json"])], env, tmp / "pfl.log")
    res = cr.checked(got, paths["out.json"], tmp / "pfl.log", "pfl")
    durations = pairs([res["begin"], *res["ends"]])
    return {"round_s": durations[1:-1], "startup_s": res["begin"] - got["launch"],
            "first_round_s": durations[0] - (res["eval_s"] or 0.0), "eval_s": res["eval_s"],
            "peak_mib": got["peak_mib"], "steps": res["steps"]}


# ----- the table ---------------------------------------------------------------------------------------------
COLUMNS = [("workload", "workload"), ("way", "way"), ("round_s", "round s"), ("ups", "updates/s"),
           ("x_plain2", "x plain 2 procs"), ("x_pfl", "x pfl"), ("x_flower", "x Flower"),
           ("startup_s", "start-up s"), ("first_round_s", "first round s"), ("eval_s", "evaluation s"),
           ("driver_mib", "peak driver RSS MiB"), ("workers_mib", "peak workers RSS MiB"),
           ("ray_mib", "peak Ray system RSS MiB"), ("pss_mib", "peak total PSS MiB"), ("nice", "workers' nice")]


PHASES = ("workers_s", "aggregate_s", "commit_s")
PHASE_COLUMNS = [("workload", "workload"), ("way", "way"), ("round_s", "round s"),
                 ("workers_s_med", "waiting for workers s"), ("aggregate_s_med", "FedAvg in the driver s"),
                 ("commit_s_med", "commit + checkpoint s")]


def ratio(per_rep: dict[str, list[float]], way: str, other: str) -> float:
    """Median over repetitions of (other's median round / this way's): > 1 = this way is faster."""
    got = [o / w for w, o in zip(per_rep.get(way, []), per_rep.get(other, []), strict=False) if w == w and o == o]
    return common.median(got)


def summarize(name: str, k: int, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of one workload from its runs (way -> one dict per repetition)."""
    per_rep = {way: [common.median(r["round_s"]) for r in rs] for way, rs in runs.items() if rs}
    rows = []
    for way, rs in runs.items():
        if not rs:
            continue
        rounds = [t for r in rs for t in r["round_s"]]
        peaks = [r.get("peak_mib") or {} for r in rs]
        med = common.median(rounds)
        rows.append({
            "workload": name, "way": way, "round_s": med, "ups": k / med,
            "x_plain2": ratio(per_rep, way, "plain 2 procs"), "x_pfl": ratio(per_rep, way, "pfl"),
            "x_flower": ratio(per_rep, way, "Flower"),
            "startup_s": common.median(r.get("startup_s", float("nan")) for r in rs),
            "first_round_s": common.median(r.get("first_round_s", float("nan")) for r in rs),
            "eval_s": common.median(float("nan") if r.get("eval_s") is None else r["eval_s"] for r in rs),
            "driver_mib": max((p.get("driver", float("nan")) for p in peaks), default=float("nan")),
            "workers_mib": max((p.get("workers", float("nan")) for p in peaks), default=float("nan")),
            "ray_mib": max((p.get("ray", float("nan")) for p in peaks), default=float("nan")),
            "pss_mib": max((p.get("total_pss", float("nan")) for p in peaks), default=float("nan")),
            "nice": max((p["workers_nice"] for p in peaks if p.get("workers_nice") is not None), default="—"),
            **{f"{k}_med": common.median(v for r in rs for v in r.get("phases", {}).get(k, [])) for k in PHASES},
            "round_s_all": rounds, "round_s_per_repeat": per_rep[way],
            "loadavg": [r.get("loadavg") for r in rs],
        })
    return rows


# ----- main --------------------------------------------------------------------------------------------------
def prepare(name: str, tmp: Path, args) -> dict[str, Any]:
    from harness.engine.worker import build_algorithm
    from partitions import build_federated_dataset

    total = WORKLOADS[name] if args.rounds is None else args.rounds
    cfg = make_config(name, tmp / name, total + 2, args.workers)
    data = bt.same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
    algo, model, vec = build_algorithm(cfg, data)
    convs = any(type(m).__name__.startswith("Conv") for m in model.modules())
    rounds, sizes, c = bt.sampled_clients(cfg, data, total + 2), data.sizes("train"), cfg.train
    return {"steps": sum(-(-int(sizes[i]) // c.batch_size) * c.local_epochs for r in rounds for i in r),
            "cfg": cfg, "data": data, "spec": algo.spec, "vec": vec, "params": int(algo.spec.size),
            "batched": None if convs else with_train(cfg, batched="on", cohort_size=16),
            "rounds": rounds, "k": cfg.sampled_per_round(len(data.train_clients))}


def run_way(way: str, p: dict[str, Any], tmp: Path, args, pools: dict, name: str) -> dict[str, Any] | None:
    cfg, w, same = p["cfg"], args.workers, args.worker_niceness != "ray"
    if way == "harness per-client":
        return run_harness(cfg, tmp, w, same)
    if way == RAY_NICE_WAY:
        return run_harness(cfg, tmp, w, same_niceness=False)
    if way == "harness batched":
        return run_harness(p["batched"], tmp, w, same) if p["batched"] is not None else None
    if way.startswith("plain"):
        procs = 1 if way == "plain 1 proc" else 2
        if (name, procs) not in pools:
            pools[(name, procs)] = mp.get_context("spawn").Pool(procs, bt._plain_init,
                                                                (json.dumps(cfg.model_dump(mode="json")),))
        return bt.run_compute(cfg, pools[(name, procs)], p["rounds"], p["data"], p["vec"], procs)
    if way == "Flower":
        return run_flower(cfg, tmp, p["rounds"], p["vec"], p["spec"], w, same) if args.frameworks else None
    return run_pfl(cfg, tmp, p["rounds"], p["vec"], args.pfl_procs) if args.frameworks else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=["femnist-mlp", "femnist-lenet5", "femnist1k-mlp"],
                    choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds per run (default: per workload)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pfl-procs", type=int, default=2)
    ap.add_argument("--ways", nargs="+", default=WAYS, choices=WAYS, help="a subset of the ways")
    ap.add_argument("--worker-niceness", choices=["same", "ray", "both"], default="same",
                    help="same: Ray's workers (harness, Flower) at the bench's niceness, like the plain loop and "
                         "pfl; ray: Ray's default (+15); both: same, plus the harness per-client at Ray's")
    ap.add_argument("--contend", type=int, default=0,
                    help="N busy-loop processes at the bench's niceness during the whole run: a controlled stand-in "
                         "for other users' jobs (diagnostic of how niceness shares a busy machine)")
    ap.add_argument("--quick", action="store_true", help="smoke: quick-mlp, 1 repetition, no Flower/pfl")
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.workloads, args.repeats = ["quick-mlp"], 1
    args.frameworks = not args.quick and BENCH_PY.exists()
    if not args.quick and not args.frameworks:
        print(f"no {BENCH_PY}: Flower and pfl are skipped (see the module docstring)", file=sys.stderr)
    if any(n.startswith("femnist") for n in args.workloads) and not bb.FEMNIST.exists():
        print(f"FEMNIST not found at {bb.FEMNIST}", file=sys.stderr)
        return 2
    common.torch_threads(1)
    info = common.machine_info()
    if args.frameworks:
        info["flwr"] = "1.42 / pfl 0.6 (.venv-bench)"
    ways = [w for w in WAYS if w in args.ways]
    if args.worker_niceness == "both":
        ways.insert(1, RAY_NICE_WAY)
    runs: dict[str, dict[str, list]] = {n: {w: [] for w in ways} for n in args.workloads}
    pools: dict = {}
    failures: list[str] = []
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.contend)]
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmpdir:
        tmp = Path(tmpdir)
        prepared = {n: prepare(n, tmp, args) for n in args.workloads}
        try:
            for rep in range(args.repeats):
                for name in args.workloads:
                    for way in ways:
                        print(f"[{rep + 1}/{args.repeats}] {name}: {way}", flush=True)
                        load = os.getloadavg()
                        try:
                            got = run_way(way, prepared[name], tmp / name, args, pools, name)
                        except RuntimeError as err:  # one failed framework run must not lose the others
                            print(f"    FAILED: {str(err)[-1500:]}", flush=True)
                            failures.append(f"{name} / {way} / repetition {rep + 1}: {str(err)[-300:]}")
                            continue
                        if got is not None:
                            if "steps" in got and got["steps"] != prepared[name]["steps"]:
                                failures.append(f"{name} / {way}: {got['steps']} SGD steps, the harness's "
                                                f"clients need {prepared[name]['steps']}")
                            runs[name][way].append(dict(got, loadavg=[round(x, 2) for x in load]))
                            print(f"    rounds {[round(t, 3) for t in got['round_s']]}", flush=True)
                    for key in [k for k in pools if k[0] == name]:  # the plain pools hold the data set: free them
                        pools.pop(key).terminate()
        finally:
            for pool in pools.values():
                pool.terminate()
            for hog in hogs:
                hog.kill()
    rows = []
    for name in args.workloads:
        p = prepared[name]
        rows += [dict(r, params=p["params"], clients=p["cfg"].partition.num_clients, per_round=p["k"])
                 for r in summarize(name, p["k"], runs[name])]
    common.print_table("bench_compare", rows, COLUMNS)
    notes = NOTES + [f"{args.repeats} interleaved repetition(s); measured rounds per run: "
                     + ", ".join(f"{n} {WORKLOADS[n] if args.rounds is None else args.rounds}"
                                 for n in args.workloads) + "."] + [f"FAILED: {f}" for f in failures]
    settings = {"quick": args.quick, "repeats": args.repeats, "workers": args.workers, "pfl_procs": args.pfl_procs,
                "workloads": args.workloads, "frameworks": args.frameworks, "worker_niceness": args.worker_niceness,
                "bench_niceness": os.nice(0), "contend": args.contend}
    jpath, mpath = common.write_results("bench_compare", args.out, title="Throughput: harness vs plain loop, "
                                        "Flower 1.42 and pfl 0.6", machine=info, settings=settings,
                                        tables=[("Round time, start-up, evaluation, memory", rows, COLUMNS),
                                                ("Where a harness round goes (medians)",
                                                 [r for r in rows if r["way"].startswith("harness")], PHASE_COLUMNS)],
                                        notes=notes, extra={"failures": failures})
    print(f"\nwrote {jpath} and {mpath}")
    return 0


NOTES = [
    "round s: median over the measured rounds of all repetitions; updates/s = clients a round / round s.",
    "x plain 2 procs / x pfl / x Flower: that way's median round time / this way's, within each repetition, "
    "then the median over repetitions; > 1 = this way is faster.",
    "start-up: launch of the way's process to its first round's start (imports, Ray / torch.distributed, data; "
    "the harness also starts its actors here, Flower starts them in its first round); first round: the warm-up "
    "round (not in round s; pfl's without its evaluation, but with the before/after evaluation of its 100 "
    "trained users that pfl runs at evaluating iterations); evaluation: one pass over every client's test "
    "split (harness and Flower after the last round, pfl at iteration 0, on the initial model).",
    "peak RSS: sampled twice a second, summed per group (RSS counts shared pages in every process; total PSS "
    "shares them out); workers = Ray actors (harness, Flower) or pfl's 2 ranks "
    "and their sampler subprocesses; driver for pfl = torchrun's launcher; Ray system = raylet, GCS, agents.",
    "plain: the per-client compute limit (no framework); no start-up, evaluation or memory columns.",
    "pfl repeats a user's first-epoch order in later epochs (1 epoch on FEMNIST: identical order). The SGD steps "
    "of every plain and pfl run (pfl: its model's loss calls, summed over the ranks) are checked against the "
    "harness's clients (ceil(samples / batch) x epochs each); a mismatch is listed as FAILED.",
    "workers' nice: the highest niceness seen among the processes that train (Ray starts its workers 15 levels "
    "below their driver unless RAY_worker_niceness says otherwise; --worker-niceness same sets it to 0 so every "
    "way trains at the bench's own niceness; on a busy machine that decides how much CPU a way gets).",
    "the machine is shared with long background jobs: read the ratios, measured within one run.",
]

if __name__ == "__main__":
    sys.exit(main())
