"""Study wall time with worker actors reused across cells vs a fresh set of actors per cell.

Runs runs/studies/demo.yaml (36 cells: 6 algorithms x 2 partitions x 3 seeds, two cells at a time
with one Ray worker each) twice into fresh MLflow stores: once as `fedharness study` does (an
ActorCache: actors are reconfigured for each cell), once with new actors for every cell (the
behaviour before the cache). Alternating order over repetitions; also checks that both give the
same personalized accuracy in every cell.

Run:     .venv/bin/python bench/bench_study_actors.py     (~3 min per repetition)
Results: bench/results/bench_study_actors.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SPEC = common.ROOT / "runs" / "studies" / "demo.yaml"


def run_once(reuse: bool, folder: Path) -> tuple[float, dict[int, float]]:
    from mlflow.tracking import MlflowClient

    from harness import studies
    from harness.engine.executor import make_executor

    uri = f"sqlite:///{folder}/mlflow.db"
    spec = studies.load_study(str(SPEC), [f"checkpoint_dir={folder}/ckpt"], tracking_uri=uri)
    runner = studies.StudyRunner(spec, progress=False)
    if not reuse:
        runner._executor = lambda cfg, data: make_executor(cfg, data)  # a fresh pool per cell
    outcome = runner.run()
    if outcome.failed:
        raise RuntimeError(f"cells failed: {outcome.failed}")
    client = MlflowClient(uri)
    acc = {i: client.get_run(rid).data.metrics["personal_acc"] for i, rid in outcome.run_ids.items()}
    return outcome.wall_s, acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=str(common.RESULTS))
    args = ap.parse_args(argv)
    machine = common.machine_info()
    rows, accs = [], {}
    for rep in range(args.repeats):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for reuse in order:
            with tempfile.TemporaryDirectory() as tmp:
                wall, acc = run_once(reuse, Path(tmp))
            accs.setdefault(reuse, acc)
            label = "reused actors" if reuse else "fresh actors per cell"
            rows.append({"repeat": rep, "actors": label, "cells": len(acc), "wall_s": wall})
            print(f"[{rep + 1}/{args.repeats}] {label}: {len(acc)} cells in {wall:.1f} s", flush=True)
    same = accs[True] == accs[False]
    reused = common.median(r["wall_s"] for r in rows if r["actors"] == "reused actors")
    fresh = common.median(r["wall_s"] for r in rows if r["actors"] != "reused actors")
    summary = [{"fresh_s": fresh, "reused_s": reused, "speedup": fresh / reused, "identical_accuracy": same}]
    common.write_results(
        "bench_study_actors", args.out, title="Study wall time: actors reused across cells vs fresh per cell",
        machine=machine, settings={"spec": "runs/studies/demo.yaml", "repeats": args.repeats},
        tables=[("Demo study (36 cells, 2 at a time, 1 worker each)", summary,
                 [("fresh_s", "fresh actors per cell, s"), ("reused_s", "reused actors, s"),
                  ("speedup", "speed-up"), ("identical_accuracy", "same personal_acc in every cell")]),
                ("Runs", rows, [("repeat", "repeat"), ("actors", "actors"), ("cells", "cells"),
                                ("wall_s", "study wall s")])],
        notes=["wall s = the study's own wall time (Ray start, all cells, tracking), medians over repetitions.",
               "fresh actors per cell = the behaviour before harness.engine.executor.ActorCache."])
    print(f"fresh {fresh:.1f} s, reused {reused:.1f} s, speed-up {fresh / reused:.2f}x, identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
