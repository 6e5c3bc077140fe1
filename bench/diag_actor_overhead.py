"""Diagnostic: where the harness's gap to the compute limit comes from, piece by piece.

Same 64 clients of the avgcnn-iid throughput workload (real MNIST), one round of FedAvg local
training, timed four ways in one process session, 1 Ray CPU, interleaved over repetitions:

* in-process     - `Worker.train` called directly in this (driver) process;
* actor inside   - the same `Worker.train` inside the harness's Ray actor (`ActorWorker`, with the
                   allocator fix of harness/allocator.py), timed inside the actor (no transfer);
* actor untuned  - the same inside an actor without that fix (a plain `Worker`): what the harness
                   ran before the fix;
* actor call     - the call from the driver, with the updates returned through the object store;
* minor page faults of the training thread per call, and the niceness Ray gives worker processes.

Run:     .venv/bin/python bench/diag_actor_overhead.py   (~3 min)
Results: bench/results/diag_actor_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import os
import resource
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
    from harness.engine.executor import ActorWorker
    from harness.engine.worker import Worker, build_algorithm
    from partitions import build_federated_dataset

    torch.set_num_threads(1)
    workload = bt.WORKLOADS["avgcnn-iid"]
    cfg = bt.make_config(workload, Path(tempfile.mkdtemp()), 3, 1)
    data = bt.same_layout_as_workers(build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
    cids = bt.sampled_clients(cfg, data, 3)[1][: args.clients]
    _, _, vec = build_algorithm(cfg, data)
    jobs = [ClientJob(c, 1, {"model": vec}, {}, None) for c in cids]
    machine = common.machine_info()
    common.init_ray(2)  # two actors, called one at a time: each has a core, the driver shares

    def timed(self, batch):
        flt = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        t = time.perf_counter()
        self.train(batch)
        return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - flt, os.nice(0)

    class TimedWorker(ActorWorker):
        timed_train = timed

    class UntunedTimedWorker(Worker):
        timed_train = timed

    ref = ray.put(data)
    actor = ray.remote(num_cpus=1)(TimedWorker).remote(cfg.model_dump(mode="json"), ref)
    untuned = ray.remote(num_cpus=1)(UntunedTimedWorker).remote(cfg.model_dump(mode="json"), ref)
    local = UntunedTimedWorker(cfg.model_dump(mode="json"), data)
    ray.get([actor.timed_train.remote(jobs[:4]), untuned.timed_train.remote(jobs[:4])])  # warm-up
    local.train(jobs[:4])
    rows = []
    for rep in range(args.repeats):
        in_process, _, _ = local.timed_train(jobs)
        inside, faults, nice = ray.get(actor.timed_train.remote(jobs))
        inside_untuned, faults_untuned, _ = ray.get(untuned.timed_train.remote(jobs))
        t = time.perf_counter()
        ray.get(actor.train.remote(jobs))
        call = time.perf_counter() - t
        rows.append({"repeat": rep, "in_process_s": in_process, "actor_inside_s": inside,
                     "actor_untuned_inside_s": inside_untuned, "actor_call_s": call, "actor_faults": faults,
                     "actor_untuned_faults": faults_untuned, "actor_nice": nice})
        print(f"[{rep + 1}/{args.repeats}] in-process {in_process:.3f}s  actor inside {inside:.3f}s "
              f"({faults} faults)  untuned actor inside {inside_untuned:.3f}s ({faults_untuned} faults)  "
              f"actor call {call:.3f}s  (actor nice {nice})", flush=True)
    ray.shutdown()
    keys = ("in_process_s", "actor_inside_s", "actor_untuned_inside_s", "actor_call_s", "actor_faults",
            "actor_untuned_faults")
    med = {k: statistics.median(r[k] for r in rows) for k in keys}
    summary = {
        "clients": len(jobs), "model_params": int(vec.size), **med,
        "actor_compute_vs_in_process_pct": 100 * (med["actor_inside_s"] / med["in_process_s"] - 1),
        "untuned_actor_compute_vs_in_process_pct": 100 * (med["actor_untuned_inside_s"] / med["in_process_s"] - 1),
        "transfer_and_call_s": med["actor_call_s"] - med["actor_inside_s"],
        "actor_nice": rows[0]["actor_nice"],
    }
    columns = [("in_process_s", "in-process s"), ("actor_inside_s", "actor, timed inside s"),
               ("actor_untuned_inside_s", "actor without allocator fix s"),
               ("actor_call_s", "actor call incl. returning updates s"),
               ("actor_compute_vs_in_process_pct", "actor compute vs in-process %"),
               ("untuned_actor_compute_vs_in_process_pct", "untuned actor vs in-process %"),
               ("actor_faults", "page faults per call"), ("actor_untuned_faults", "untuned page faults per call"),
               ("transfer_and_call_s", "transfer + call s"), ("actor_nice", "actor niceness")]
    notes = [f"{summary['clients']} clients of the avgcnn-iid throughput workload ({summary['model_params']:,} "
             f"parameters), medians of {args.repeats} interleaved repetitions; the actors are called one at a "
             "time, so the second core is free for Ray's own processes and the driver.",
             "actor without allocator fix: a plain Worker in an actor, i.e. glibc's default trim/mmap thresholds "
             "(harness/allocator.py explains the page faults); page faults = minor faults of the training thread.",
             "in-process: Worker.train in the driver process; actor inside: the same call timed inside a Ray actor "
             "(no transfer); actor call: from the driver, updates returned through the object store."]
    common.write_results("diag_actor_overhead", args.out, title="Diagnostic: actor compute vs in-process compute",
                         machine=machine, settings={"repeats": args.repeats, "clients": args.clients},
                         tables=[("Medians", [summary], columns), ("Repetitions", rows,
                                  [("repeat", "repeat"), ("in_process_s", "in-process s"),
                                   ("actor_inside_s", "actor inside s"),
                                   ("actor_untuned_inside_s", "untuned actor inside s"),
                                   ("actor_call_s", "actor call s")])],
                         notes=notes)
    print(f"wrote {args.out}/diag_actor_overhead.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
