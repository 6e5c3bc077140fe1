"""Scale benchmark: memory and disk of the client-state store vs the number of clients, and
round time vs clients per round, on real MNIST through the real engine.

Part 1 (full model per client, engine-driven). The `local` algorithm keeps a whole model per
client (state['model']), the worst case for the store (FedOBP and Ditto keep the same). For
each client count N the disk store is first filled with N full-model states through
`DiskStore.commit` (the engine's own write path, in batches of 1,000), then the real engine
runs a few rounds for each clients-per-round K on top of it, and one evaluation of all N
clients. A sampler polls the memory (RSS and PSS) of the driver and of every Ray process.
Expected: RAM stays flat in N (it depends on K), disk grows linearly in N.

Part 2 (head-only state, store-level). N up to 100,000 clients each holding only a
classifier head (what FedPer/FedRep/LG keep), exercised directly with the store calls the
engine makes each round: get_many(K) for the sampled clients and commit(K) of their new
state; and, for the memory backend, the snapshot the engine writes at every checkpoint.

Run:  .venv/bin/python bench/bench_scale.py            (full: ~10-20 min, ~5 GB of disk)
      .venv/bin/python bench/bench_scale.py --quick    (smoke: < 1 min)
Results: bench/results/bench_scale.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MIB = 2**20


SHAPES = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}


def model_sizes(model: str, options: dict, data: str = "mnist") -> tuple[int, int, np.ndarray]:
    """(parameters, head parameters, initial flat vector) of the model on the data's images, 10 classes."""
    from harness.models import build_model
    from protocol.params import ParamSpec, model_to_vector

    net = build_model(model, SHAPES[data], 10, **options)
    spec = ParamSpec.of(net)
    return spec.size, int(spec.head_mask().sum()), model_to_vector(net, spec)


def fill(store, n: int, make_state, batch: int = 1000) -> float:
    """Write `n` clients' states through store.commit, `batch` clients per commit; seconds.
    """
    commit = store.commit
    t = time.perf_counter()
    for lo in range(0, n, batch):
        commit({c: make_state(c) for c in range(lo, min(n, lo + batch))}, round=-1)
    return time.perf_counter() - t


def check_disk(path: Path, need_bytes: float, reserve_gib: float) -> str | None:
    free = common.free_disk_gib(path)
    if need_bytes / 2**30 > free - reserve_gib:
        return (f"needs {need_bytes / 2**30:.1f} GiB but only {free:.1f} GiB is free "
                f"(keeping {reserve_gib} GiB in reserve)")
    return None


# ----- part 1 ---------------------------------------------------------------------------------------
def run_child(kind: str, params: dict, work: Path, in_process: bool = False) -> dict:
    """Run one setting in a fresh Python process, so that its memory readings start clean (a
    process that has freed memory keeps much of it: later settings would inherit the peak).
    `in_process` (used by --quick) skips that isolation to save the start-up time."""
    if in_process:
        return child_engine(params) if kind == "engine" else child_head(params)
    out = work / f"child-{kind}-{os.getpid()}-{time.time_ns()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps({**params, "out": str(out)})]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"child {kind} {params} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    row = json.loads(out.read_text())
    out.unlink()
    return row


def child_engine(p: dict) -> dict:
    """One (store, N, K) setting: the real engine, a memory sampler, the store's timings."""
    common.init_ray(2)
    cfg = common.run_config(Path(p["work"]) / "runs", num_clients=p["n"], clients_per_round=p["k"],
                            rounds=p["rounds"] + 2, algorithm="local", model=p["model"], model_options=p["options"],
                            local_epochs=1, batch_size=32, store=p["backend"], store_path=p["store_path"],
                            data_source=None if p["data"] == "mnist" else p["data"])
    base = common.memory_snapshot()
    engine, timer = common.timed_engine(cfg, skip_eval=not p["evaluate"])
    fill_s = float("nan")
    if p["backend"] == "memory":
        _, _, vec = model_sizes(p["model"], p["options"], p["data"])
        # a copy per client: the memory store must hold N distinct arrays, as in a real run
        fill_s = fill(engine.store, p["n"], lambda c: {"model": vec.copy()})
    with common.MemorySampler() as mem:
        timed = common.run_timed(engine, timer)
    engine.discard_checkpoint()
    rounds = timed["round_s"][1:]  # the first round warms the workers up
    r = p["rounds"] + 2
    return {
        "clients": p["n"], "backend": p["backend"], "per_round": p["k"],
        "round_s": common.median(rounds), "round_min_s": min(rounds) if rounds else float("nan"),
        "clients_per_s": p["k"] / common.median(rounds) if rounds else float("nan"),
        "train_s": common.median(timer.train_s[1:r]),
        "store_get_s": common.median(timer.get_s[1:r]),
        "store_commit_s": common.median(c - ck for c, ck in zip(timer.commit_s[1:r], timer.ckpt_s[1:r],
                                                                strict=False)),
        "checkpoint_s": common.median(timer.ckpt_s[1:r]),
        "eval_all_s": timer.eval_s[0] if timer.eval_s else float("nan"),
        "fill_s": fill_s, "driver_rss_start_mib": base["driver_rss"],
        **{f"peak_{key}_mib": v for key, v in mem.peak.items()},
    }


def full_state(args, work: Path, vec: np.ndarray) -> tuple[list[dict], list[dict], list[str]]:
    from harness.engine.store import DiskStore

    state_rows, round_rows, notes = [], [], []
    model_options = {"hidden": args.hidden} if args.model == "mlp" else {}
    per_client = vec.nbytes
    settings = [("disk", n) for n in args.clients] + [("memory", n) for n in args.memory_clients]
    for backend, n in settings:
        need = n * (per_client + 4096) * (1 if backend == "disk" else 2)  # memory: the per-round snapshot
        problem = check_disk(work, need, args.reserve_gib)
        if problem:
            notes.append(f"skipped N={n:,} ({backend}): {problem}")
            print(notes[-1], flush=True)
            continue
        store_path = work / f"full-{backend}-{n}"
        shutil.rmtree(store_path, ignore_errors=True)
        fill_s = float("nan")
        if backend == "disk":
            fill_s = fill(DiskStore(store_path), n, lambda c: {"model": vec})
        rows = []
        ks = [k for k in args.per_round if k <= n]
        for i, k in enumerate(ks):
            params = {"work": str(work), "n": n, "k": k, "rounds": args.rounds, "model": args.model,
                      "options": model_options, "backend": backend, "evaluate": i == 0,
                      "store_path": str(store_path) if backend == "disk" else None}
            row = run_child("engine", {**params, "data": args.data}, work, args.in_process)
            rows.append(row)
            common.print_table(f"N={n:,} {backend} K={k}", [row], ROUND_COLUMNS)
        round_rows += rows
        if backend == "memory":
            fill_s = common.median(r["fill_s"] for r in rows)
        usage = common.disk_usage(store_path) if backend == "disk" else {
            "disk_apparent_mib": float("nan"), "disk_allocated_mib": float("nan"), "files": 0}
        def peak(key: str, rows: list[dict] = rows) -> float:
            return max((r.get(key, 0.0) for r in rows), default=0.0)

        state_rows.append({
            "clients": n, "backend": backend, "state_kib": per_client / 1024,
            "state_total_mib": n * per_client / MIB, **usage, "prefill_s": fill_s,
            "driver_rss_start_mib": common.median(r["driver_rss_start_mib"] for r in rows),
            "peak_driver_rss_mib": peak("peak_driver_rss_mib"), "peak_workers_rss_mib": peak("peak_workers_rss_mib"),
            "peak_ray_other_rss_mib": peak("peak_ray_other_rss_mib"), "peak_total_pss_mib": peak("peak_total_pss_mib"),
            "eval_all_s": next((r["eval_all_s"] for r in rows if r["eval_all_s"] == r["eval_all_s"]), float("nan")),
        })
        common.print_table(f"state store, N={n:,} ({backend})", state_rows[-1:], STATE_COLUMNS)
        if not args.keep:
            shutil.rmtree(store_path, ignore_errors=True)
    return state_rows, round_rows, notes


# ----- part 2 ---------------------------------------------------------------------------------------
def child_head(p: dict) -> dict:
    """One (N, store) head-only setting, store calls only (what the engine calls per round)."""
    from harness.engine.store import DiskStore, MemoryStore

    n, backend, work = p["n"], p["backend"], Path(p["work"])
    head = np.random.default_rng(0).standard_normal(p["head_size"]).astype(np.float32)
    gc.collect()
    rss0 = common.memory_snapshot()["driver_rss"]
    path = work / f"head-{backend}-{n}"
    shutil.rmtree(path, ignore_errors=True)
    store = DiskStore(path) if backend == "disk" else MemoryStore()
    row = {"clients": n, "backend": backend, "state_kib": head.nbytes / 1024, "state_total_mib": n * head.nbytes / MIB}
    row["prefill_s"] = fill(store, n, lambda c: {"head": head.copy()})
    row["driver_rss_growth_mib"] = common.memory_snapshot()["driver_rss"] - rss0
    if backend == "disk":
        row |= common.disk_usage(path)
    else:
        snap = work / f"head-memory-{n}.npz"
        t = time.perf_counter()
        store.save(snap)
        row["snapshot_s"] = time.perf_counter() - t  # the engine writes this snapshot at every checkpoint
        row["disk_apparent_mib"] = snap.stat().st_size / MIB
        snap.unlink()
    gen = np.random.default_rng(1)
    for k in p["ks"]:
        if k > n:
            continue
        gets, commits = [], []
        for rnd in range(p["rounds"]):
            cids = np.sort(gen.choice(n, size=k, replace=False)).tolist()
            t = time.perf_counter()
            states = store.get_many(cids)
            gets.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.commit({c: {"head": s["head"] + 1} for c, s in states.items()}, round=rnd)
            commits.append(time.perf_counter() - t)
        row[f"get_ms_k{k}"] = 1000 * common.median(gets)
        row[f"commit_ms_k{k}"] = 1000 * common.median(commits)
        row[f"cycle_ms_k{k}"] = row[f"get_ms_k{k}"] + row[f"commit_ms_k{k}"]
        row[f"per_client_us_k{k}"] = 1000 * row[f"cycle_ms_k{k}"] / k
    if not p["keep"]:
        shutil.rmtree(path, ignore_errors=True)
    return row


def head_only(args, work: Path, head_size: int) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    per_client = 4 * head_size
    for n in args.head_clients:
        for backend in args.head_backends:
            problem = check_disk(work, n * (per_client + 4096) * (2 if backend == "memory" else 1), args.reserve_gib)
            if problem:
                notes.append(f"skipped head-only N={n:,} ({backend}): {problem}")
                continue
            params = {"work": str(work), "n": n, "backend": backend, "head_size": head_size,
                      "ks": args.per_round, "rounds": max(args.rounds, 3), "keep": args.keep}
            rows.append(run_child("head", params, work, args.in_process))
            common.print_table(f"head-only N={n:,} ({backend})", rows[-1:], head_columns(args.per_round))
    return rows, notes


STATE_COLUMNS = [
    ("clients", "clients N"), ("backend", "store"), ("state_kib", "state/client KiB"),
    ("state_total_mib", "state total MiB"), ("disk_allocated_mib", "disk (du) MiB"), ("files", "files"),
    ("prefill_s", "fill s"), ("driver_rss_start_mib", "driver RSS at start MiB"),
    ("peak_driver_rss_mib", "peak driver RSS MiB"), ("peak_workers_rss_mib", "peak workers RSS MiB"),
    ("peak_ray_other_rss_mib", "peak other Ray RSS MiB"),
    ("peak_total_pss_mib", "peak total PSS MiB"), ("eval_all_s", "evaluate all N, s"),
]
ROUND_COLUMNS = [
    ("clients", "clients N"), ("backend", "store"), ("per_round", "clients/round K"), ("round_s", "round s (median)"),
    ("clients_per_s", "client updates/s"), ("train_s", "train phase s"), ("store_get_s", "store get s"),
    ("store_commit_s", "store commit s"), ("checkpoint_s", "checkpoint s"),
    ("peak_driver_rss_mib", "peak driver RSS MiB"),
    ("peak_workers_rss_mib", "peak workers RSS MiB"), ("peak_total_pss_mib", "peak total PSS MiB"),
]


def head_columns(ks: list[int]) -> list[tuple[str, str]]:
    cols = [("clients", "clients N"), ("backend", "store"), ("state_kib", "state/client KiB"),
            ("state_total_mib", "state total MiB"), ("disk_allocated_mib", "disk (du) MiB"), ("files", "files"),
            ("prefill_s", "fill s"), ("driver_rss_growth_mib", "driver RSS growth MiB"),
            ("snapshot_s", "memory snapshot s")]
    cols += [(f"cycle_ms_k{k}", f"get+commit K={k}, ms") for k in ks]
    return cols


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (< 1 min)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1000, 10000], help="N for the full-model part")
    ap.add_argument("--memory-clients", type=int, nargs="*", default=[1000],
                    help="N for the full-model part with the memory store (RAM grows: keep it small)")
    ap.add_argument("--per-round", type=int, nargs="+", default=[10, 100, 1000], help="clients per round K")
    ap.add_argument("--head-clients", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--head-backends", nargs="+", default=["disk", "memory"], choices=["disk", "memory"])
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per setting (after one warm-up)")
    ap.add_argument("--model", default="mlp", choices=["mlp", "avgcnn"])
    ap.add_argument("--data", default="mnist", choices=["mnist", "digits"],
                    help="mnist: ../shared/data/mnist (70,000 images); digits: sklearn's 1,797 (--quick)")
    ap.add_argument("--in-process", action="store_true",
                    help="run every setting in this process (faster; memory readings less clean)")
    ap.add_argument("--hidden", type=int, default=128, help="mlp width (128: 118,282 parameters, 462 KiB)")
    ap.add_argument("--workdir", default=str(common.ROOT / "bench" / "out" / "scale"),
                    help="where the stores are written (deleted afterwards unless --keep)")
    ap.add_argument("--reserve-gib", type=float, default=20.0, help="free disk to leave untouched")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-head", action="store_true")
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, params = args.child[0], json.loads(args.child[1])
        return common.run_child(child_engine if kind == "engine" else child_head, params)
    if args.quick:
        args.clients, args.memory_clients, args.per_round = [100, 300], [100], [20]
        args.head_clients, args.rounds, args.hidden = [1000, 5000], 1, 32
        args.data, args.in_process = "digits", True
    if args.data == "mnist" and not common.mnist_available():
        print(f"MNIST not found under {common.MNIST_ROOT}", file=sys.stderr)
        return 2
    common.torch_threads(1)
    info = common.machine_info()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    options = {"hidden": args.hidden} if args.model == "mlp" else {}
    params, head_params, vec = model_sizes(args.model, options, args.data)
    print(f"model {args.model} {options}: {params:,} parameters ({vec.nbytes / 1024:.0f} KiB), head {head_params:,}; "
          f"free disk {common.free_disk_gib(work):.1f} GiB", flush=True)
    state_rows, round_rows, head_rows, notes = [], [], [], []
    if not args.skip_full:
        try:
            state_rows, round_rows, n1 = full_state(args, work, vec)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        notes += n1
    if not args.skip_head:
        head_rows, n2 = head_only(args, work, head_params)
        notes += n2
    notes += [
        f"model: {args.model} {options} on {args.data} ({'x'.join(map(str, SHAPES[args.data]))}), "
        f"{params:,} parameters = {vec.nbytes / 1024:.0f} KiB of float32 per full-model state; "
        f"head = {head_params:,} parameters.",
        f"Full-model part: algorithm `local` (one model per client in the store), iid {args.data} partition, "
        "1 local epoch, batch 32, 2 Ray workers x 1 CPU, torch threads 1, tracking off. The store is filled "
        "with N states through the store's commit first; each K then runs 1 warm-up + "
        f"{args.rounds} measured rounds; evaluation of all N clients runs once per N (in the run of the smallest K).",
        "round s = start of a round to start of the next: sampling, state fetch, training on the workers, "
        "aggregation, state commit and checkpoint. 'store commit s' excludes the checkpoint written inside it.",
        "RSS counts shared pages (Ray's object store) once per process that maps them; PSS splits them, so "
        "'total PSS' is the memory the whole run really holds.",
        "Head-only part: store calls only (no Ray): per round get_many(K) of random clients then commit(K).",
        "Timings taken while other jobs shared the machine are noisy; compare rows of one run.",
    ]
    settings = {"quick": args.quick, "data": args.data, "model": args.model, **options, "rounds": args.rounds,
                "per_round": args.per_round}
    tables = [
        ("Client-state store vs number of clients (full model per client)", state_rows, STATE_COLUMNS),
        ("Round time vs clients per round", round_rows, ROUND_COLUMNS),
        ("Head-only state (store calls only)", head_rows, head_columns(args.per_round)),
    ]
    jpath, mpath = common.write_results("bench_scale", args.out, title="Scale: client-state store and round time",
                                        machine=info, settings=settings, tables=tables, notes=notes,
                                        extra={"model_params": params, "head_params": head_params})
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
