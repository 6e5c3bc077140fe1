"""Diagnostic: where the harness's gap to the compute limit comes from, piece by piece.

Same 64 clients of the avgcnn-iid throughput workload (real MNIST), one round of FedAvg local
training, timed four ways in one process session, 1 Ray CPU, interleaved over repetitions:

* in-process     - `Worker.train` called directly in this (driver) process;
* actor inside   - the same `Worker.train` inside a Ray actor, timed inside the actor
                   (no argument or result transfer);
* actor call     - the same call from the driver, with the updates returned through the object store;
* the niceness Ray gives worker processes (it starts them at nice 15).

Run:     .venv/bin/python bench/diag_actor_overhead.py   (~2 min)
Results: bench/results/diag_actor_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)

    import bench_throughput as bt
    import ray
    import torch

    from algorithms.base import ClientJob
    from harness.worker import Worker, build_algorithm
    from partitions import build_federated_dataset

    torch.set_num_threads(1)
    workload = bt.WORKLOADS["avgcnn-iid"]
    cfg = bt.make_config(workload, Path(tempfile.mkdtemp()), 3, 1)
    data = bt.same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
    cids = bt.sampled_clients(cfg, data, 3)[1][: args.clients]
    _, _, vec = build_algorithm(cfg, data)
    jobs = [ClientJob(c, 1, {"model": vec}, {}, None) for c in cids]
    machine = common.machine_info()
    common.init_ray(1)

    class TimedWorker(Worker):
        def timed_train(self, batch):
            t = time.perf_counter()
            self.train(batch)
            return time.perf_counter() - t, os.nice(0)

    actor = ray.remote(num_cpus=1)(TimedWorker).remote(cfg.model_dump(mode="json"), ray.put(data))
    local = TimedWorker(cfg.model_dump(mode="json"), data)
    ray.get(actor.timed_train.remote(jobs[:4]))  # warm-up
    local.train(jobs[:4])
    rows = []
    for rep in range(args.repeats):
        in_process, _ = local.timed_train(jobs)
        inside, nice = ray.get(actor.timed_train.remote(jobs))
        t = time.perf_counter()
        ray.get(actor.train.remote(jobs))
        call = time.perf_counter() - t
        rows.append({"repeat": rep, "in_process_s": in_process, "actor_inside_s": inside, "actor_call_s": call,
                     "actor_nice": nice})
        print(f"[{rep + 1}/{args.repeats}] in-process {in_process:.3f}s  actor inside {inside:.3f}s  "
              f"actor call {call:.3f}s  (actor nice {nice})", flush=True)
    ray.shutdown()
    med = {k: statistics.median(r[k] for r in rows) for k in ("in_process_s", "actor_inside_s", "actor_call_s")}
    summary = {
        "clients": len(jobs), "model_params": int(vec.size), **med,
        "actor_compute_vs_in_process_pct": 100 * (med["actor_inside_s"] / med["in_process_s"] - 1),
        "transfer_and_call_s": med["actor_call_s"] - med["actor_inside_s"],
        "actor_nice": rows[0]["actor_nice"],
    }
    columns = [("in_process_s", "in-process s"), ("actor_inside_s", "actor, timed inside s"),
               ("actor_call_s", "actor call incl. returning updates s"),
               ("actor_compute_vs_in_process_pct", "actor compute vs in-process %"),
               ("transfer_and_call_s", "transfer + call s"), ("actor_nice", "actor niceness")]
    notes = [f"{summary['clients']} clients of the avgcnn-iid throughput workload ({summary['model_params']:,} "
             f"parameters), medians of {args.repeats} interleaved repetitions; 1 Ray CPU, so the second core is "
             "free for Ray's own processes and the driver.",
             "in-process: Worker.train in the driver process; actor inside: the same call timed inside a Ray actor "
             "(no transfer); actor call: from the driver, updates returned through the object store."]
    common.write_results("diag_actor_overhead", args.out, title="Diagnostic: actor compute vs in-process compute",
                         machine=machine, settings={"repeats": args.repeats, "clients": args.clients},
                         tables=[("Medians", [summary], columns), ("Repetitions", rows,
                                  [("repeat", "repeat"), ("in_process_s", "in-process s"),
                                   ("actor_inside_s", "actor inside s"), ("actor_call_s", "actor call s")])],
                         notes=notes)
    print(f"wrote {args.out}/diag_actor_overhead.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
