"""Start-up and shutdown: where the seconds before a run's first round go, and whether any Ray process of the
run outlives it.

Each repetition starts a fresh Python process that times, in order: the imports (`harness.engine`, which
brings torch, Ray, pandas, MLflow's helpers), `build_parts` (data, partition, algorithm, clock), `ray.init` of
the loopback-only local cluster (harness.engine.cluster.start_local via init_ray), the actors' start (the
RayExecutor's constructor: processes, `import torch`, each worker's model and trainer) and the rounds
(training, evaluation of every client in the first). Two ways of this checkout, interleaved: the default
warm start (Ray and the actors start in a background thread while the first rounds train in the driver) and
`workers.warm_start=false` (wait for the actors). The process then ends normally; this script waits 10 s and
looks for any process still running whose command line names that run's Ray session folder.

Run:  .venv/bin/python bench/bench_startup.py [--repeats 3] [--workers 2] [--rounds 3] [--compare ../other]
Results: bench/results/bench_startup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import harness.engine  # noqa: F401  (torch, ray, pandas, the engine)
import harness.engine.executor as E
R = sys.modules["harness.engine.run"]
from harness.config import load_config
from harness.engine.cluster import session_dir
from harness.engine.listeners import RoundListener
t_import = time.perf_counter()
marks, ends = {}, []
make, init, ray_executor = R.make_executor, E.init_ray, E.RayExecutor.__init__
def timed_make(cfg, data):
    marks["executor"] = time.perf_counter()
    ex = make(cfg, data)
    marks["first_round"] = time.perf_counter()
    return ex
def timed_init(cfg):
    init(cfg)
    marks["ray"] = time.perf_counter()
def timed_ray_executor(self, *args, **kwargs):  # in the warm start's thread, or in the main one
    marks["ray_start"] = time.perf_counter()
    ray_executor(self, *args, **kwargs)
    marks["actors"] = time.perf_counter()
    marks["session"] = session_dir()
R.make_executor, E.init_ray, E.RayExecutor.__init__ = timed_make, timed_init, timed_ray_executor
class Rounds(RoundListener):
    def on_round(self, record):
        ends.append(time.perf_counter())
R.run(load_config(sys.argv[1], sys.argv[2:]), progress=False, listeners=[Rounds()])
print(json.dumps({"import_s": t_import - t0, "parts_s": marks["executor"] - t_import,
                  "ray_init_s": marks["ray"] - marks["ray_start"], "actors_s": marks["actors"] - marks["ray"],
                  "to_first_round_s": marks["first_round"] - t0, "first_round_s": ends[0] - marks["first_round"],
                  "to_round1_end_s": ends[0] - t0, "to_ray_ready_s": marks["actors"] - t0,
                  "rounds_before_ray": sum(e < marks["actors"] for e in ends), "to_last_round_end_s": ends[-1] - t0,
                  "session": marks["session"]}))
"""


def leftovers(session: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session and session in cmd:
            out.append(f"{pid}: {cmd[:120]}")
    return out


COLUMNS = [("repeat", "repeat"), ("code", "code"), ("way", "way"), ("import_s", "imports s"),
           ("parts_s", "data + algorithm s"), ("ray_init_s", "ray.init s"), ("actors_s", "actors s"),
           ("to_first_round_s", "command to first round s"), ("first_round_s", "first round (train + eval) s"),
           ("to_round1_end_s", "command to end of round 1 s"), ("to_ray_ready_s", "command to actors ready s"),
           ("rounds_before_ray", "rounds done before"), ("to_last_round_end_s", "command to end of last round s"),
           ("left_after_10s", "Ray processes left after 10 s")]
WAYS = {"warm start": [], "wait for the actors": ["workers.warm_start=false"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--compare", default=None, help="another checkout of the project (e.g. ../main): its engine is "
                    "timed too, alternating with this one's, same spec")
    args = ap.parse_args(argv)
    spec = str(common.ROOT / "runs" / "quickstart.yaml")
    # (root, way, overrides): this checkout both ways; a --compare checkout as it is (it may predate warm_start)
    ways = [(common.ROOT, way, extra) for way, extra in WAYS.items()]
    ways += [(Path(args.compare).resolve(), "as it is", [])] if args.compare else []
    rows = []
    for rep, (root, way, extra) in ((r, w) for r in range(args.repeats) for w in ways):
        overrides = [f"rounds={args.rounds}", "tracking.enabled=false", f"workers.num_workers={args.workers}",
                     f"checkpoint_dir={common.ROOT / '.fedharness' / 'bench-startup'}", *extra]
        env = dict(os.environ, PYTHONPATH=str(root))
        proc = subprocess.run([sys.executable, "-c", CHILD, spec, *overrides], capture_output=True, text=True,
                              cwd=root, env=env, timeout=600)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(10)
        left = leftovers(got.get("session") or "")
        rows.append({"repeat": rep + 1, "code": str(root), "way": way, **got, "left_after_10s": len(left),
                     "left": left})
        common.print_table(f"repeat {rep + 1}", rows[-1:], COLUMNS)
    notes = ["quickstart spec (digits, 50 clients, MLP), `rounds` rounds, Ray with the given workers x 1 CPU, tracking "
             "off; each repetition a fresh process; the first round includes the evaluation of every client.",
             "warm start (workers.warm_start=true, the default): Ray and the actors start in a background thread while "
             "the first rounds train in the driver; ray.init and actors are then timed in that thread. wait for the "
             "actors: workers.warm_start=false, the engine before warm start (ray.init and actors before round 1).",
             "command to first round: process start to the start of round 1; rounds done before: rounds that ended "
             "before the actors were ready (trained in-process)."]
    jpath, mpath = common.write_results("bench_startup", args.out, title="Start-up and shutdown",
                                        machine=common.machine_info(), settings=vars(args),
                                        tables=[("Seconds from the command", rows, COLUMNS)], notes=notes)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
