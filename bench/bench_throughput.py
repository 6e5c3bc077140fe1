"""Throughput benchmark: client updates per second of the harness vs the compute limit and vs
Flower's Ray simulation, on the same model, data, clients and local work.

Three ways to run the same FedAvg rounds (same MNIST partition, same sampled clients per
round, same local epochs, batch size, optimizer and data order), 2 CPU cores each way:

* harness   - the real engine (harness.engine), 2 Ray worker actors x 1 CPU, torch threads 1,
              tracking off, no evaluation; a round is timed from its start to the start of
              the next one (sampling, dispatch, training, aggregation, state commit, checkpoint);
* compute   - the compute limit: a plain PyTorch loop (load the global weights, SGD epochs over
              batches scaled and normalised on the fly, read the weights back) in 2 processes x 1 torch thread,
              each taking half of the round's clients balanced by sample count; a round is the
              slower process's loop time (no communication, no aggregation);
* flower    - Flower's simulation (flwr.simulation.run_simulation, Ray backend, 2 actors x 1 CPU,
              FedAvg strategy); the Flower client trains with the harness's own LocalTrainer, so
              the computation is identical and only the framework differs; run in a subprocess of
              the separate environment .venv-bench (Flower pins protobuf < 7); per-process caches
              of data and model are kept (Flower's recommended practice, generous to Flower).

Reported: client updates/s of each (median over rounds, the first round of each run dropped as
warm-up), harness overhead = 1 - harness/compute, and harness/flower. The runs are interleaved
(harness, compute, flower, then again) so that load from other jobs hits all three alike.

Run:  .venv/bin/python bench/bench_throughput.py           (full: ~15 min on an idle machine)
      .venv/bin/python bench/bench_throughput.py --quick   (smoke: < 1 min, Flower skipped)
Flower environment (once):  python3 -m venv .venv-bench &&
      echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-bench/lib/python3.11/site-packages/main.pth &&
      .venv-bench/bin/pip install "flwr>=1.10,<2" psutil
Results: bench/results/bench_throughput.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FLOWER_PY = common.ROOT / ".venv-bench" / "bin" / "python"

# name, model, options, partition scheme, clients N, clients/round K, local epochs, batch
WORKLOADS = {
    "avgcnn-iid": dict(model="avgcnn", options={}, scheme="iid", clients=1000, per_round=100, epochs=2, batch=32),
    "avgcnn-dir0.5": dict(model="avgcnn", options={}, scheme="dirichlet", clients=1000, per_round=100, epochs=2,
                          batch=32),
    "mlp-iid": dict(model="mlp", options={"hidden": 128}, scheme="iid", clients=1000, per_round=100, epochs=2,
                    batch=32),
    "quick-mlp": dict(model="mlp", options={"hidden": 32}, scheme="iid", clients=100, per_round=20, epochs=1,
                      batch=16, data="digits"),
}


def make_config(w: dict, tmp: Path, rounds: int, workers: int = 2):
    return common.run_config(tmp, num_clients=w["clients"], clients_per_round=w["per_round"], rounds=rounds,
                             algorithm="fedavg", model=w["model"], model_options=w["options"], scheme=w["scheme"],
                             min_samples=10, local_epochs=w["epochs"], batch_size=w["batch"],
                             data_source=w.get("data"), workers=workers)


def sampled_clients(cfg, data, rounds: int) -> list[list[int]]:
    """The clients the engine samples in each round (its own virtual clock, same seed)."""
    from harness.engine.clock import DeviceProfiles, VirtualClock

    profiles = DeviceProfiles.draw(cfg.budget, data.num_clients, cfg.seed)
    clock = VirtualClock(cfg.budget, profiles, cfg.train.batch_size, cfg.seed)
    k = cfg.sampled_per_round(len(data.train_clients))
    return [clock.sample(r, data.train_clients, k).tolist() for r in range(rounds)]


# ----- the harness --------------------------------------------------------------------------------------
def run_harness(cfg) -> dict[str, Any]:
    engine, timer = common.timed_engine(cfg, skip_eval=True)
    timed = common.run_timed(engine, timer)
    engine.discard_checkpoint()
    measured = slice(1, len(timed["round_s"]))  # the rounds whose full duration is known, minus warm-up
    # where a harness round goes: waiting for the workers (executor.map, all waves), the server-side
    # FedAvg, the state commit + checkpoint, and the rest (sampling, job building, bookkeeping)
    per_round = {"workers_s": timer.map_s["train"], "aggregate_s": timer.aggregate_s,
                 "commit_checkpoint_s": timer.commit_s}
    phases = {k: v[measured] for k, v in per_round.items()}
    return {"round_s": timed["round_s"][1:], "total_s": timed["total_s"], "phases": phases}


def per_rep(rounds: list[float], repeats: int) -> list[float]:
    """Median round time of each repetition (the rounds are stored repetition after repetition)."""
    n = len(rounds) // repeats if repeats else 0
    return [common.median(rounds[i * n : (i + 1) * n]) for i in range(repeats)] if n else []



def same_layout_as_workers(data):
    """The image array with the strides the harness's Ray workers see (a canonical C-order copy,
    as Ray's object store delivers it). Built in-process, `x[:, None]` leaves a 0 stride on the
    channel axis. Since LocalTrainer copies every conv batch into explicit NHWC strides the source
    strides no longer pick the kernels; the copy keeps the three ways' inputs identical anyway."""
    data.x = data.x.copy()
    return data


# ----- the compute limit: plain PyTorch in 2 processes -----------------------------------------------------
_PLAIN: dict[str, Any] = {}


def _plain_init(cfg_json: str) -> None:
    import torch

    from harness.config import validate
    from harness.engine.allocator import keep_freed_memory
    from harness.engine.training import channels_last_pays
    from harness.models import build_model
    from partitions import build_federated_dataset

    torch.set_num_threads(1)
    keep_freed_memory()  # the harness's actors have it; the limit must not lose to them on page faults
    common.mnist_source()
    cfg = validate(json.loads(cfg_json))
    data = same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, *([1] * (data.x.ndim - 2)))
    std = torch.tensor(data.std, dtype=torch.float32).view_as(mean)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, **cfg.model.options)
    # the layout the harness's LocalTrainer picks (channels-last for conv models on the CPU)
    channels_last = channels_last_pays(model, torch.device("cpu"), tuple(data.input_shape))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _PLAIN.update(cfg=cfg, data=data, mean=mean, std=std, y=torch.from_numpy(data.y), model=model,
                  channels_last=channels_last)


def _plain_train(task: tuple[int, list[int], np.ndarray]) -> tuple[float, int]:
    """Train the given clients one after another from the global vector; (seconds, steps)."""
    import torch
    import torch.nn.functional as F

    from protocol.rng import rng

    rnd, cids, global_vec = task
    cfg, data, y_all, model, mean, std, channels_last = (
        _PLAIN[k] for k in ("cfg", "data", "y", "model", "mean", "std", "channels_last"))
    bs, steps = cfg.train.batch_size, 0
    start = torch.from_numpy(global_vec)
    params = list(model.parameters())
    t = time.perf_counter()
    for cid in cids:
        with torch.no_grad():  # copy into the parameters (vector_to_parameters would alias `start`)
            offset = 0
            for p in params:
                p.copy_(start[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
        index = data.split_of(cid, "train")
        gen = rng(cfg.seed, "batches", rnd, cid)
        for _ in range(cfg.train.local_epochs):
            order = index[gen.permutation(len(index))]
            for lo in range(0, len(order), bs):
                batch = order[lo : lo + bs]
                # scaled and normalised per batch, as one would from a uint8 array, in the trainer's layout
                xb = torch.from_numpy(data.x[batch])
                xb = ((xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb) - mean) / std
                if channels_last:
                    xb = torch.empty(xb.shape, memory_format=torch.channels_last).copy_(xb)
                loss = F.cross_entropy(model(xb), y_all[torch.from_numpy(batch)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()  # the upload (any layout)
    return time.perf_counter() - t, steps


def _balanced_halves(cids: list[int], sizes: np.ndarray, parts: int) -> list[list[int]]:
    """Longest-first greedy split by training-set size: the ideal a scheduler could reach."""
    bins: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for c in sorted(cids, key=lambda c: -sizes[c]):
        i = int(np.argmin(load))
        bins[i].append(c)
        load[i] += int(sizes[c])
    return [sorted(b) for b in bins]


def run_compute(cfg, pool, rounds: list[list[int]], data, vec: np.ndarray, procs: int) -> dict[str, Any]:
    sizes = data.sizes("train")
    times, steps = [], 0
    for rnd, cids in enumerate(rounds):
        res = pool.map(_plain_train, [(rnd, part, vec) for part in _balanced_halves(cids, sizes, procs)])
        times.append(max(t for t, _ in res))
        steps += sum(s for _, s in res)
    return {"round_s": times[1:-1], "steps": steps}  # the rounds the harness measures


# ----- Flower ---------------------------------------------------------------------------------------------
_FLOWER: dict[str, Any] = {}


def _flower_trainer(cfg_path: str):
    """Per-process cache (data set, model, trainer): built once per Flower actor."""
    if "trainer" not in _FLOWER:
        import torch

        from harness.config import validate
        from harness.engine.allocator import keep_freed_memory
        from harness.engine.training import LocalTrainer
        from harness.engine.worker import build_algorithm
        from partitions import build_federated_dataset

        torch.set_num_threads(1)
        keep_freed_memory()  # as the harness's actors do: only the frameworks differ
        common.mnist_source()
        cfg = validate(json.loads(Path(cfg_path).read_text()))
        data = same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
        algo, model, _ = build_algorithm(cfg, data)
        _FLOWER.update(spec=algo.spec, data=data,
                       trainer=LocalTrainer(model, algo.spec, data, cfg.train, torch.device("cpu"), cfg.seed))
    return _FLOWER["trainer"], _FLOWER["spec"], _FLOWER["data"]


def flower_client_fn(context):
    from flwr.client import NumPyClient

    from algorithms.base import ClientJob

    class BenchClient(NumPyClient):
        def fit(self, parameters, config):
            trainer, spec, data = _flower_trainer(str(config["cfg"]))
            cid, rnd = int(config["pid"]), int(config["round"])
            trainer.set_vector(np.concatenate([p.reshape(-1) for p in parameters]).astype(np.float32))
            job = ClientJob(cid, rnd, {}, {})
            trainer.start(job)
            trainer.train(job)
            vec = trainer.get_vector()
            return [vec[s.start : s.stop].reshape(s.shape) for s in spec.slots], len(data.train_of(cid)), {}

        def evaluate(self, parameters, config):
            trainer, _, _ = _flower_trainer(str(config["cfg"]))
            vec = np.concatenate([p.reshape(-1) for p in parameters]).astype(np.float32)
            correct, loss, count = trainer.evaluate(vec, int(config["pid"]))  # the harness's own evaluation
            return loss / max(count, 1), count, {"correct": correct}

    return BenchClient().to_client()


def flower_main(spec_path: str) -> None:
    """Entry point inside .venv-bench: run the Flower simulation, write round timestamps."""
    import logging

    import torch
    from flwr.client import ClientApp
    from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    rounds: list[list[int]] = spec["rounds"]
    n, k = spec["num_clients"], len(rounds[0])
    init = np.load(spec["init"])
    starts: list[float] = []
    evaluated: list[float] = []

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            starts.append(time.perf_counter())
            pairs = super().configure_fit(server_round, parameters, client_manager)
            cids = rounds[server_round - 1]  # the harness's sampled clients of this round
            return [(proxy, FitIns(ins.parameters, {"pid": cid, "round": server_round - 1, "cfg": spec["cfg"]}))
                    for (proxy, ins), cid in zip(pairs, cids, strict=True)]

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"Flower round {server_round}: {len(failures)} failures: {failures[:1]}")
            out = super().aggregate_fit(server_round, results, failures)
            if server_round == len(rounds):
                starts.append(time.perf_counter())
            return out

        def configure_evaluate(self, server_round, parameters, client_manager):
            # spec["evaluate"]: every client's test split once, after the last round (as the harness does)
            if not spec.get("evaluate") or server_round != len(rounds):
                return []
            proxies = client_manager.sample(num_clients=n, min_num_clients=n)
            return [(proxy, EvaluateIns(parameters, {"pid": cid, "cfg": spec["cfg"]}))
                    for cid, proxy in enumerate(proxies)]

        def aggregate_evaluate(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"Flower evaluation: {len(failures)} failures: {failures[:1]}")
            evaluated.append(time.perf_counter())
            return super().aggregate_evaluate(server_round, results, failures)

    def server_fn(context):
        strategy = TimedFedAvg(fraction_fit=k / n, fraction_evaluate=0.0, min_fit_clients=k, min_evaluate_clients=0,
                               min_available_clients=n, initial_parameters=ndarrays_to_parameters(init_list))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=len(rounds)))

    slots = spec["slots"]
    init_list = [init[a:b].reshape(shape) for a, b, shape in slots]
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": spec["workers"], "log_to_driver": False}}
    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=flower_client_fn),
                   num_supernodes=n, backend_config=backend)
    total = time.perf_counter() - t0
    eval_s = evaluated[0] - starts[-1] if evaluated else None  # from the last fit's aggregation to the evaluation's
    Path(spec["out"]).write_text(json.dumps({"starts": starts, "total_s": total, "eval_s": eval_s}))


def flower_job(cfg, tmp: Path, rounds: list[list[int]], vec: np.ndarray, spec_obj, workers: int,
               evaluate: bool = False) -> tuple[list[str], dict[str, str], Path]:
    """(argv, env, out path) of one Flower simulation in .venv-bench; its spec and inputs written to `tmp`."""
    cfg_path, init_path, out = tmp / "flower_cfg.json", tmp / "flower_init.npy", tmp / "flower_out.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    np.save(init_path, vec)
    spec = {"cfg": str(cfg_path), "init": str(init_path), "out": str(out), "rounds": rounds, "workers": workers,
            "num_clients": cfg.partition.num_clients, "evaluate": evaluate,
            "slots": [(s.start, s.stop, list(s.shape)) for s in spec_obj.slots]}
    spec_path = tmp / "flower_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), str(common.ROOT / "bench")]))
    code = f"import bench.bench_throughput as b; b.flower_main({str(spec_path)!r})"
    return [str(FLOWER_PY), "-c", code], env, out


def run_flower(cfg, tmp: Path, rounds: list[list[int]], vec: np.ndarray, spec_obj, workers: int) -> dict[str, Any]:
    argv, env, out = flower_job(cfg, tmp, rounds, vec, spec_obj, workers)
    log = tmp / "flower.log"
    with log.open("w") as fh:
        proc = subprocess.run(argv, cwd=common.ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"Flower run failed (exit {proc.returncode}); log tail:\n{tail}")
    got = json.loads(out.read_text())
    starts = got["starts"]
    durations = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {"round_s": durations[1:-1], "total_s": got["total_s"]}


def flower_version() -> str | None:
    if not FLOWER_PY.exists():
        return None
    try:
        out = subprocess.run([str(FLOWER_PY), "-c", "import flwr, ray; print(flwr.__version__, ray.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# ----- main -----------------------------------------------------------------------------------------------
COLUMNS = [
    ("workload", "workload"), ("model_params", "params"), ("clients", "N"), ("per_round", "K"),
    ("steps_per_client", "SGD steps/client"), ("compute_ups", "compute limit, updates/s"),
    ("harness_ups", "harness, updates/s"), ("flower_ups", "Flower, updates/s"),
    ("harness_overhead_pct", "harness overhead %"), ("harness_vs_flower", "harness / Flower"),
]


PHASE_COLUMNS = [
    ("workload", "workload"), ("compute_round_s", "compute limit round s"), ("harness_round_s", "harness round s"),
    ("harness_workers_s", "waiting for workers s"), ("harness_aggregate_s", "aggregate s"),
    ("harness_commit_checkpoint_s", "commit + checkpoint s"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (< 1 min); Flower only with --flower")
    ap.add_argument("--workloads", nargs="+", default=["avgcnn-iid", "avgcnn-dir0.5", "mlp-iid"],
                    choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=6, help="measured rounds per run (after one warm-up round)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of (harness, compute, flower)")
    ap.add_argument("--workers", type=int, default=2, help="workers / processes / actors, 1 CPU each")
    ap.add_argument("--flower", choices=["auto", "on", "off"], default="auto",
                    help="auto: run Flower when .venv-bench exists (not in --quick)")
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.workloads, args.rounds, args.repeats = ["quick-mlp"], 2, 1
    if any(WORKLOADS[w].get("data", "mnist") == "mnist" for w in args.workloads) and not common.mnist_available():
        print(f"MNIST not found under {common.MNIST_ROOT}", file=sys.stderr)
        return 2
    use_flower = args.flower == "on" or (args.flower == "auto" and not args.quick and FLOWER_PY.exists())
    if args.flower == "on" and not FLOWER_PY.exists():
        print(f"--flower on needs {FLOWER_PY} (see the module docstring)", file=sys.stderr)
        return 2
    common.torch_threads(1)
    common.init_ray(args.workers)
    info = common.machine_info()
    fv = flower_version() if use_flower else None
    if fv:
        info["flwr"], info["ray_flower_env"] = fv.split()
    from harness.engine.worker import build_algorithm
    from partitions import build_federated_dataset

    measured = args.rounds + 2  # one warm-up round, and the last round has no next start
    rows, raw = [], {}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmpdir:
        tmp = Path(tmpdir)
        prepared, phases = {}, {}
        for name in args.workloads:
            w = WORKLOADS[name]
            cfg = make_config(w, tmp / name, measured, args.workers)
            data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
            algo, _, vec = build_algorithm(cfg, data)
            rounds = sampled_clients(cfg, data, measured)
            sizes = data.sizes("train")
            steps = [sum(-(-int(sizes[c]) // w["batch"]) * w["epochs"] for c in r) for r in rounds]
            prepared[name] = (w, cfg, data, algo, vec, rounds, steps)
            raw[name] = {"harness": [], "compute": [], "flower": []}
            phases[name] = {}
        pools = {}
        try:
            for rep in range(args.repeats):
                for name in args.workloads:
                    w, cfg, data, algo, vec, rounds, steps = prepared[name]
                    print(f"[{rep + 1}/{args.repeats}] {name}: harness", flush=True)
                    got = run_harness(cfg)
                    raw[name]["harness"] += got["round_s"]
                    for key, values in got["phases"].items():
                        phases[name].setdefault(key, []).extend(values)
                    print(f"[{rep + 1}/{args.repeats}] {name}: compute limit", flush=True)
                    if name not in pools:
                        pools[name] = ctx.Pool(args.workers, _plain_init, (json.dumps(cfg.model_dump(mode="json")),))
                    raw[name]["compute"] += run_compute(cfg, pools[name], rounds, data, vec, args.workers)["round_s"]
                    if use_flower:
                        print(f"[{rep + 1}/{args.repeats}] {name}: Flower", flush=True)
                        (tmp / name).mkdir(parents=True, exist_ok=True)
                        raw[name]["flower"] += run_flower(cfg, tmp / name, rounds, vec, algo.spec,
                                                          args.workers)["round_s"]
        finally:
            for pool in pools.values():
                pool.terminate()
        for name in args.workloads:
            w, cfg, data, algo, vec, rounds, steps = prepared[name]
            k = len(rounds[0])
            ups = {who: k / common.median(raw[name][who]) if raw[name][who] else float("nan")
                   for who in ("harness", "compute", "flower")}
            rows.append({
                "workload": name, "model": w["model"], "model_params": int(algo.spec.size), "clients": w["clients"],
                "per_round": k, "partition": w["scheme"], "local_epochs": w["epochs"], "batch": w["batch"],
                "steps_per_client": float(np.mean(steps) / k),
                "compute_ups": ups["compute"], "harness_ups": ups["harness"], "flower_ups": ups["flower"],
                # ratios per repetition (its three runs minutes apart), then their median: pooling the
                # rounds of all repetitions would mix load levels when other jobs come and go
                "harness_overhead_pct": common.median(100 * (1 - c / h) for h, c in
                                                      zip(per_rep(raw[name]["harness"], args.repeats),
                                                          per_rep(raw[name]["compute"], args.repeats), strict=True)),
                "harness_vs_flower": common.median(f / h for h, f in
                                                   zip(per_rep(raw[name]["harness"], args.repeats),
                                                       per_rep(raw[name]["flower"], args.repeats), strict=True))
                if use_flower else float("nan"),
                "overhead_pct_per_repeat": [100 * (1 - c / h) for h, c in
                                            zip(per_rep(raw[name]["harness"], args.repeats),
                                                per_rep(raw[name]["compute"], args.repeats), strict=True)],
                "round_s": {who: raw[name][who] for who in raw[name]},
                "harness_phases_s": phases[name],
            })
            for key, values in phases[name].items():
                rows[-1][f"harness_{key}"] = common.median(values)
            rows[-1]["harness_round_s"] = common.median(raw[name]["harness"])
            rows[-1]["compute_round_s"] = common.median(raw[name]["compute"])
            common.print_table(name, rows[-1:], COLUMNS)
            common.print_table(f"{name}: where a harness round goes", rows[-1:], PHASE_COLUMNS)
    import ray

    ray.shutdown()
    notes = [
        "updates/s = clients per round / median round time over all repetitions; the first round of every run is "
        "dropped (warm-up: actor start, data and model caches). The overhead and harness/Flower columns are the "
        "median over repetitions of the ratio of median round times within one repetition.",
        "compute limit: plain PyTorch loop (batches normalised on the fly, SGD with momentum, same data order) in "
        f"{args.workers} processes x 1 torch thread, clients split longest-first by sample count; round = slower "
        "process's loop time (no communication, no aggregation, no state store).",
        f"harness: real engine, FedAvg, {args.workers} Ray actor(s) x 1 CPU, torch threads 1, memory store, "
        "tracking off, no evaluation; round = start of a round to start of the next (includes aggregation, "
        "commit, checkpoint).",
        "Flower: run_simulation with the Ray backend, FedAvg, actors x 1 CPU; its client trains with the harness's "
        "LocalTrainer (identical computation), receives the harness's sampled clients, caches data/model per "
        "actor process; round = configure_fit to the next configure_fit.",
        "compute limit and Flower hold the images with the strides the harness's Ray workers get (a C-order copy), "
        "so all three run the same PyTorch kernels (see same_layout_as_workers).",
        "all three set the allocator thresholds of harness/allocator.py (the harness's actors do since 2026-12-01), "
        "so none of them pays page faults on freed activations that the others do not.",
        "harness overhead % = 1 - harness/compute: framework cost (Ray calls, serialisation, scheduling, batches "
        "normalised on the fly, load imbalance between the workers, aggregation, checkpoint).",
        f"{args.repeats} interleaved repetition(s) of {args.rounds} measured rounds; timings taken while other jobs "
        "shared the machine are noisy: read ratios within one run.",
    ]
    settings = {"quick": args.quick, "rounds": args.rounds, "repeats": args.repeats, "workers": args.workers,
                "flower": bool(use_flower)}
    jpath, mpath = common.write_results(
        "bench_throughput", args.out, title="Throughput: harness vs compute limit vs Flower", machine=info,
        settings=settings, tables=[("Client updates per second", rows, COLUMNS),
                                    ("Where a harness round goes (medians)", rows, PHASE_COLUMNS)], notes=notes)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
