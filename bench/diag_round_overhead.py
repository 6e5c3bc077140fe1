"""Diagnostic: how much of a round's call to the workers is the workers' own training, round by round.

FEMNIST by writer (300 writers, bench_batched's workload), MLP, 100 clients a round drawn with a fixed seed,
2 Ray actors x 1 CPU (the harness's RayExecutor and its balanced batches, `rounds.waves`), per-client
training. Each round, every actor times its own `Worker.train` inside the actor; the driver times the whole
call (send the jobs, train, return every client's update through the object store). The difference is what
returning every update to the driver costs: the most that summing updates on the workers could win.

Run:     .venv/bin/python bench/diag_round_overhead.py [--rounds 10]   (~1 min)
Results: bench/results/diag_round_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _timed_train(worker, jobs):
    """Runs inside the actor (Ray's __ray_call__): the updates and the actor's own seconds."""
    t = time.perf_counter()
    out = worker.train(jobs)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)

    import bench_batched as bb
    import numpy as np
    import ray

    from harness.engine.executor import RayExecutor
    from harness.engine.parts import build_parts
    from harness.engine.rounds import waves
    from protocol.messages import ClientJob

    machine = common.machine_info()
    cfg = bb.femnist_config(Path(tempfile.mkdtemp()), bb.WORKLOADS["femnist-mlp"], args.rounds, 2, "off", 16)
    parts = build_parts(cfg, evaluate=False)
    executor = RayExecutor(cfg, parts.data)
    sizes = parts.data.sizes("train")
    gen = np.random.default_rng(0)
    rows = []
    try:
        for rnd in range(args.rounds):
            cids = sorted(gen.choice(parts.data.train_clients, 100, replace=False).tolist())
            (batches,) = waves(cids, 2, sizes)
            jobs = [[ClientJob(c, rnd, {"model": parts.global_vec}, {}, None, None) for c in b] for b in batches]
            t = time.perf_counter()
            results = ray.get([a.__ray_call__.remote(_timed_train, j) for a, j in
                               zip(executor.actors, jobs, strict=True)])
            call = time.perf_counter() - t
            inside = [r[1] for r in results]
            rows.append({"round": rnd + 1, "call_s": call, "worker_a_s": inside[0], "worker_b_s": inside[1],
                         "overhead_s": call - max(inside), "overhead_pct": 100 * (call - max(inside)) / call,
                         "steps": sum(u.steps for r in results for u in r[0])})
    finally:
        executor.shutdown()
        ray.shutdown()
    later = rows[2:]
    summary = [{"rounds": f"3-{args.rounds}", "call_s": common.median(r["call_s"] for r in later),
                "overhead_s": common.median(r["overhead_s"] for r in later),
                "overhead_pct": common.median(r["overhead_pct"] for r in later)}]
    cols = [("round", "round"), ("call_s", "call s"), ("worker_a_s", "worker 1 inside s"),
            ("worker_b_s", "worker 2 inside s"), ("overhead_s", "call - slower worker s"),
            ("overhead_pct", "% of the call"), ("steps", "SGD steps")]
    scols = [("rounds", "rounds"), ("call_s", "call s (median)"), ("overhead_s", "call - slower worker s (median)"),
             ("overhead_pct", "% of the call (median)")]
    notes = ["call: the driver's ray.get of both actors' train calls (jobs out, every update back); inside: each "
             "actor's own Worker.train; 50 clients per actor, per-client training, torch threads 1.",
             "round 1 includes each actor's first-use costs (torch._dynamo import in the first optimizer step)."]
    common.print_table("per round", rows, cols)
    common.write_results("diag_round_overhead", args.out, title="Where a round's call to the workers goes",
                         machine=machine, settings={"rounds": args.rounds, "workers": 2, "clients_per_round": 100},
                         tables=[("Summary (rounds 3 on)", summary, scols), ("Per round", rows, cols)], notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
