"""Process plumbing of bench_compare.py: each framework run is a fresh process, timed from its launch and
polled for memory while it runs.

* `monitored(argv, env, log)` starts a command, samples the resident memory of its whole process tree twice
  a second and returns the exit code, the launch time (time.perf_counter, CLOCK_MONOTONIC on Linux: the
  child's own perf_counter stamps are on the same clock) and the peak RSS per group:
  driver   - the process started (the harness's or Flower's driver; for pfl, torchrun's launcher),
  workers  - the processes that train: Ray actors ("ray::..." command lines) and, for pfl, its ranks with
             their sampler subprocesses (every other descendant that is not a Ray system process),
  ray      - Ray's system processes (raylet, GCS, agents, log monitor).
  RSS counts a page shared by several processes (torch's libraries, Ray's object store) in each of them;
  total PSS (all groups) shares it out, so it is the memory the run really holds.
  Peaks are of the group's sum at one sample, so short spikes between samples can be missed.
* `harness_main(spec)` is the harness side: the real engine (common.timed_engine, evaluation after the last
  round) in its own process, so its start-up (imports, ray.init, data, actors) is measured like the others'.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
RAY_SYSTEM = ("raylet", "gcs_server", "ray/dashboard", "ray/_private", "ray/autoscaler", "runtime_env")


def _memory_of(pid: int) -> tuple[float, float, str, int] | None:
    """(RSS MiB, PSS MiB, command line, niceness); PSS shares each shared page out among the processes mapping it."""
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        pss = rss
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    return rss, pss, cmd, nice


def group_of(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "driver"
    if cmd.startswith("ray::"):
        return "workers"
    return "ray" if any(s in cmd for s in RAY_SYSTEM) else "workers"


def tree_memory(root: int) -> dict[str, float]:
    """MiB of resident memory of `root`'s tree, summed per group, the PSS of the whole tree, and the highest
    niceness of the workers (None before any)."""
    out: dict = {"driver": 0.0, "workers": 0.0, "ray": 0.0, "total_pss": 0.0, "workers_nice": None}
    for pid in common.process_tree(root):
        got = _memory_of(pid)
        if got is not None:
            group = group_of(pid, root, got[2])
            out[group] += got[0]
            out["total_pss"] += got[1]
            if group == "workers":
                out["workers_nice"] = max(got[3], out["workers_nice"] if out["workers_nice"] is not None else -99)
    return out


def monitored(argv: list[str], env: dict[str, str], log: Path, timeout: float = 3600,
              interval: float = 0.5) -> dict:
    """Run `argv` to its end; {"rc", "launch", "peak_mib": {group: MiB}, "wall_s"}."""
    peak: dict = {"driver": 0.0, "workers": 0.0, "ray": 0.0, "total_pss": 0.0, "workers_nice": None}
    with log.open("w") as fh:
        launch = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=common.ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                for k, v in tree_memory(proc.pid).items():
                    if v is not None:
                        peak[k] = v if peak[k] is None else max(peak[k], v)
                stop.wait(interval)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        finally:
            stop.set()
            thread.join()
    return {"rc": rc, "launch": launch, "peak_mib": peak, "wall_s": time.perf_counter() - launch}


def checked(got: dict, out: Path, log: Path, who: str) -> dict:
    if got["rc"] != 0 or not out.exists():
        raise RuntimeError(f"{who} failed (exit {got['rc']}); log tail:\n{log.read_text()[-3000:]}")
    return json.loads(out.read_text())


def bench_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT), str(common.ROOT / "bench")]),
                HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0")


# ----- the harness side ------------------------------------------------------------------------------------
def harness_job(cfg, tmp: Path, workers: int) -> tuple[list[str], Path]:
    cfg_path, out = tmp / "harness_cfg.json", tmp / "harness_out.json"
    cfg_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    code = f"import compare_runner as r; r.harness_main({str(cfg_path)!r}, {str(out)!r}, {workers})"
    return [sys.executable, "-c", code], out


def harness_main(cfg_path: str, out: str, workers: int) -> None:
    from harness.config import validate

    common.torch_threads(1)
    common.init_ray(workers)
    cfg = validate(json.loads(Path(cfg_path).read_text()))
    engine, timer = common.timed_engine(cfg, skip_eval=False)  # eval_every is huge: evaluation after the last round
    common.run_timed(engine, timer)
    engine.discard_checkpoint()
    # where the rounds go (bench_throughput's phase columns): waiting for the workers, FedAvg in the driver,
    # the store's commit + checkpoint
    phases = {"workers_s": timer.map_s["train"], "aggregate_s": timer.aggregate_s, "commit_s": timer.commit_s}
    Path(out).write_text(json.dumps({"starts": timer.round_starts, "eval_s": timer.eval_s[-1] if timer.eval_s
                                     else None, "phases": phases}))
