"""Start-up and shutdown: where the seconds before a run's first round go, and whether any Ray process of the
run outlives it.

Each repetition starts a fresh Python process that times, in order: the imports (`harness.engine`, which
brings torch, Ray, pandas, MLflow's helpers), `build_parts` (data, partition, algorithm, clock), `ray.init` of
the loopback-only local cluster (harness.engine.cluster.start_local via init_ray), the actors' start (the
executor's constructor: processes, `import torch`, each worker's model and trainer) and the first round
(training, evaluation of every client). The process then ends normally; this script waits 10 s and looks
for any process still running whose command line names that run's Ray session folder.

Run:  .venv/bin/python bench/bench_startup.py [--repeats 3] [--workers 2]
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
marks = {}
make, init = R.make_executor, E.init_ray
def timed_make(cfg, data):
    marks["executor"] = time.perf_counter()
    ex = make(cfg, data)
    marks["actors"] = time.perf_counter()
    return ex
def timed_init(cfg):
    init(cfg)
    marks["ray"] = time.perf_counter()
R.make_executor, E.init_ray = timed_make, timed_init
class First(RoundListener):
    def on_round(self, record):
        marks.setdefault("round", time.perf_counter())
        marks["session"] = session_dir()
R.run(load_config(sys.argv[1], sys.argv[2:]), progress=False, listeners=[First()])
print(json.dumps({"import_s": t_import - t0, "parts_s": marks["executor"] - t_import,
                  "ray_init_s": marks["ray"] - marks["executor"], "actors_s": marks["actors"] - marks["ray"],
                  "to_first_round_s": marks["actors"] - t0, "first_round_s": marks["round"] - marks["actors"],
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


COLUMNS = [("repeat", "repeat"), ("code", "code"), ("import_s", "imports s"), ("parts_s", "data + algorithm s"),
           ("ray_init_s", "ray.init s"), ("actors_s", "actors s"), ("to_first_round_s", "command to first round s"),
           ("first_round_s", "first round (train + eval) s"), ("left_after_10s", "Ray processes left after 10 s")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(common.RESULTS))
    ap.add_argument("--compare", default=None, help="another checkout of the project (e.g. ../main): its engine is "
                    "timed too, alternating with this one's, same spec")
    args = ap.parse_args(argv)
    spec = str(common.ROOT / "runs" / "quickstart.yaml")
    roots = [common.ROOT] + ([Path(args.compare).resolve()] if args.compare else [])
    rows = []
    for rep, root in ((r, root) for r in range(args.repeats) for root in roots):
        overrides = ["rounds=1", "tracking.enabled=false", f"workers.num_workers={args.workers}",
                     f"checkpoint_dir={common.ROOT / '.fedharness' / 'bench-startup'}"]
        env = dict(os.environ, PYTHONPATH=str(root))
        proc = subprocess.run([sys.executable, "-c", CHILD, spec, *overrides], capture_output=True, text=True,
                              cwd=root, env=env, timeout=600)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(10)
        left = leftovers(got.get("session") or "")
        rows.append({"repeat": rep + 1, "code": str(root), **got, "left_after_10s": len(left), "left": left})
        common.print_table(f"repeat {rep + 1}", rows[-1:], COLUMNS)
    notes = ["quickstart spec (digits, 50 clients, MLP), 1 round, Ray with the given workers x 1 CPU, tracking off; "
             "each repetition a fresh process; the first round includes the evaluation of every client."]
    jpath, mpath = common.write_results("bench_startup", args.out, title="Start-up and shutdown",
                                        machine=common.machine_info(), settings=vars(args),
                                        tables=[("Seconds before the first round", rows, COLUMNS)], notes=notes)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
