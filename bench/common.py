"""Helpers shared by the bench/ scripts: machine description, real MNIST, process memory,
an instrumented engine, and the results writer (JSON + Markdown).

Why the pieces exist:
* results must say on what they were taken (cores, RAM, versions, load average), because the
  numbers are re-taken later on a quiet machine and compared;
* the benchmarks use real data (MNIST from ../shared/data/mnist) through the project's own
  source when one is registered, else through the small IDX reader below;
* memory is the sum over the driver and every Ray process it started (PSS avoids counting
  Ray's shared object-store pages once per process);
* `timed_engine` is the real engine with a timing listener: it measures a round from the start of
  one round to the start of the next, so state commits, checkpoints and logging are included.
"""

from __future__ import annotations

import datetime as _dt
import functools
import gzip
import json
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from harness.engine.listeners import RoundListener  # noqa: E402

MNIST_ROOT = ROOT.parent / "shared" / "data" / "mnist"
RESULTS = ROOT / "bench" / "results"


# ----- machine -------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """What the numbers were taken on; load average says how busy the machine was."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(_mem_total() / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "loadavg_start": _loadavg(),
    }
    for mod in ("numpy", "torch", "ray", "flwr"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - an absent optional package is just not listed
            pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def torch_threads(n: int = 1) -> None:
    import torch

    torch.set_num_threads(n)


# ----- real data: MNIST ------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[2] != 0x08:  # 0x08 = unsigned byte, the only type MNIST uses
        raise ValueError(f"{path}: IDX type {raw[2]:#x} is not uint8")
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_arrays(root: str | Path = MNIST_ROOT):
    """All 70,000 MNIST images (train then test) as uint8 (N, 1, 28, 28): the partition pool.

    The harness splits every client's data locally (75/25), so the official train/test split
    is not used here; mean/std are of the 1/255-scaled pixels, as sources return them.
    """
    from partitions.federated import ArrayData

    root = Path(root)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"MNIST IDX files {missing} not under {root} (see ../shared/data/README.md)")
    xtr, ytr, xte, yte = (_read_idx(root / n) for n in names)
    x = np.concatenate([xtr, xte])[:, None, :, :]
    y = np.concatenate([ytr, yte]).astype(np.int64)
    scaled = x.astype(np.float32) / 255.0
    return ArrayData(x, y, 10, mean=(float(scaled.mean()),), std=(float(scaled.std()),), name="mnist")


@functools.lru_cache(maxsize=1)
def _cached_mnist(root: str):
    return mnist_arrays(root)


def mnist_source() -> str:
    """Name of the data source to use for MNIST: the project's `mnist` source when one exists
    (it reads data.root), else `bench-mnist`, registered here from the IDX files."""
    from partitions.sources import SOURCES, source

    if "mnist" in SOURCES:
        return "mnist"
    if "bench-mnist" not in SOURCES:
        source("bench-mnist")(lambda spec: _cached_mnist(spec.root or str(MNIST_ROOT)))
    return "bench-mnist"


def register_bench_sources() -> None:
    """Ray worker setup hook: workers re-validate the run config, so a source registered only
    in the driver would be unknown to them."""
    mnist_source()


def init_ray(num_cpus: int = 2) -> None:
    """Start the local Ray cluster the harness would start (same CPUs), plus a worker setup
    hook that registers the bench MNIST source in every worker process."""
    import logging

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_worker_niceness", "0")  # actors at the driver's priority, as start_local keeps them
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": "bench.common.register_bench_sources"}
    # address="local": always a fresh cluster of our own; without it ray.init joins a cluster that
    # someone started on this machine (`ray start`), and then refuses num_cpus
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False,
             configure_logging=True, logging_level=logging.WARNING)


def mnist_available() -> bool:
    return (MNIST_ROOT / "train-images-idx3-ubyte.gz").exists()


# ----- configs ---------------------------------------------------------------------------------------
def run_config(tmp: Path, *, num_clients: int, clients_per_round: int, rounds: int, algorithm: str = "fedavg",
               model: str = "mlp", model_options: dict | None = None, scheme: str = "iid", min_samples: int = 5,
               local_epochs: int = 1, batch_size: int = 32, workers: int = 2, store: str = "memory",
               store_path: str | None = None, data_source: str | None = None, max_samples: int | None = None,
               seed: int = 0):
    """A validated RunConfig for benchmarks: tracking off, eval only at the end, files in `tmp`."""
    from harness.config import validate

    source = data_source or mnist_source()
    data: dict[str, Any] = {"source": source, "max_samples": max_samples}
    if source in ("mnist", "bench-mnist"):
        data["root"] = str(MNIST_ROOT)
    tree = {
        "name": "bench", "seed": seed, "rounds": rounds, "clients_per_round": clients_per_round,
        "eval_every": 10**6, "device": "cpu",
        "data": data,
        "partition": {"scheme": scheme, "num_clients": num_clients, "min_samples": min_samples, "alpha": 0.5,
                      "cache_dir": None},
        "model": {"name": model, "options": model_options or {}},
        "train": {"local_epochs": local_epochs, "batch_size": batch_size, "lr": 0.01, "momentum": 0.7},
        "algorithm": {"name": algorithm},
        "workers": {"num_workers": workers, "num_cpus": 1.0, "use_ray": True, "warm_start": False},
        "store": {"backend": store, "path": store_path},
        "tracking": {"enabled": False},
        "checkpoint_dir": str(tmp / "ckpt"),
    }
    return validate(tree)


# ----- the engine, instrumented ----------------------------------------------------------------------
class RoundTimer(RoundListener):
    """A listener of the real engine that keeps its per-round timings: when each round starts, the
    training part, the workers' share, store reads and commits, the aggregation, the checkpoint and
    (optionally) the evaluation. Nothing in the harness is changed or subclassed."""

    def __init__(self) -> None:
        self.round_starts: list[float] = []
        self.train_s: list[float] = []
        self.eval_s: list[float] = []
        self.ckpt_s: list[float] = []
        self.get_s: list[float] = []
        self.commit_s: list[float] = []
        self.map_s: dict[str, list[float]] = {"train": [], "evaluate": []}
        self.aggregate_s: list[float] = []

    def on_round(self, record) -> None:
        t = record.timings
        self.round_starts.append(time.perf_counter() - record.metrics["wall_round_time"])
        self.train_s.append(t["train"])
        self.get_s.append(t["store_get"])
        self.map_s["train"].append(t["map_train"])
        self.aggregate_s.append(t["aggregate"])
        if "evaluate" in t:
            self.eval_s.append(t["evaluate"])

    def on_checkpoint(self, round: int, seconds: dict[str, float]) -> None:
        if round == 0:
            return  # the checkpoint before round 1 is not part of a round
        self.ckpt_s.append(seconds["checkpoint"])
        self.commit_s.append(seconds["store_commit"] + seconds["checkpoint"])


def timed_engine(cfg, skip_eval: bool = False):
    """(engine, timer): the real engine built with a RoundTimer listener (evaluation off with skip_eval)."""
    from harness.engine import open_run

    timer = RoundTimer()
    return open_run(cfg, progress=False, listeners=[timer], evaluate=not skip_eval), timer


def run_timed(engine, timer) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = engine.loop()
    end = time.perf_counter()
    starts = timer.round_starts
    full = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {"result": result, "total_s": end - t0, "round_s": full}



# ----- process memory ---------------------------------------------------------------------------------
def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int | None = None) -> list[int]:
    """The pids of `root` (default: this process) and all its descendants (Ray's raylet, GCS
    and worker processes are descendants of the driver that started the local cluster)."""
    root = root or os.getpid()
    try:
        import psutil

        proc = psutil.Process(root)
        return [root] + [c.pid for c in proc.children(recursive=True)]
    except ImportError:
        pass
    children = _proc_children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _memory_of(pid: int) -> tuple[int, int, str] | None:
    """(rss, pss, cmdline) in bytes; pss falls back to rss where smaps_rollup is unreadable."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        rss = pss = None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
        except OSError:
            pss = None
        if rss is None:
            return None
        return rss, pss if pss is not None else rss, cmd
    except (OSError, ValueError):
        pass
    try:
        import psutil

        p = psutil.Process(pid)
        rss = p.memory_info().rss
        try:
            pss = p.memory_full_info().pss
        except Exception:  # noqa: BLE001
            pss = rss
        return rss, pss, " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - the process may have exited meanwhile
        return None


def memory_snapshot(root: int | None = None) -> dict[str, float]:
    """Memory (MiB) of the driver, the Ray worker processes ("ray::..." in their command line:
    the harness actors) and the other Ray processes (raylet, GCS, agents), as RSS and PSS."""
    me = root or os.getpid()
    out = {f"{g}_{m}": 0.0 for g in ("driver", "workers", "ray_other") for m in ("rss", "pss")}
    for pid in process_tree(me):
        got = _memory_of(pid)
        if got is None:
            continue
        rss, pss, cmd = got
        group = "driver" if pid == me else ("workers" if cmd.startswith("ray::") else "ray_other")
        out[f"{group}_rss"] += rss / 2**20
        out[f"{group}_pss"] += pss / 2**20
    out["total_rss"] = out["driver_rss"] + out["workers_rss"] + out["ray_other_rss"]
    out["total_pss"] = out["driver_pss"] + out["workers_pss"] + out["ray_other_pss"]
    return out


class MemorySampler:
    """Polls `memory_snapshot` in a thread; `.peak` holds the per-field maxima (MiB)."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, float]:
        snap = memory_snapshot()
        for k, v in snap.items():
            self.peak[k] = max(self.peak.get(k, 0.0), v)
        return snap

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ----- disk --------------------------------------------------------------------------------------------
def disk_usage(root: str | Path) -> dict[str, float]:
    """Apparent size (sum of file sizes) and allocated size (blocks, what `du` says) in MiB, and
    the file count, of a folder tree."""
    apparent = allocated = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"disk_apparent_mib": apparent / 2**20, "disk_allocated_mib": allocated / 2**20, "files": files}


def free_disk_gib(path: str | Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**30


# ----- results -------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "—"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key, "")) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def machine_line(info: dict[str, Any]) -> str:
    parts = [f"{info.get('cpus')} CPU cores ({info.get('cpu_model')})", f"{info.get('ram_gib')} GiB RAM",
             f"Python {info.get('python')}", f"torch {info.get('torch')}", f"Ray {info.get('ray')}"]
    if info.get("flwr"):
        parts.append(f"Flower {info['flwr']}")
    load = f"load average at start {info.get('loadavg_start')}, at end {info.get('loadavg_end')}"
    return f"Machine: {', '.join(parts)}; {info.get('platform')}. Taken {info.get('date')}; {load}."


def write_results(name: str, out_dir: str | Path, *, title: str, machine: dict[str, Any], settings: dict[str, Any],
                  tables: Iterable[tuple[str, list[dict[str, Any]], list[tuple[str, str]]]], notes: list[str],
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """bench/results/<name>.json (everything) and <name>.md (the tables the docs quote)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = dict(machine, loadavg_end=_loadavg())
    tables = list(tables)
    payload = {"name": name, "title": title, "machine": machine, "settings": settings,
               "tables": {t: rows for t, rows, _ in tables}, "notes": notes, **(extra or {})}
    jpath = out / f"{name}.json"
    jpath.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    lines = [f"# {title}", "", machine_line(machine), "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    for caption, rows, columns in tables:
        lines += [f"## {caption}", "", markdown_table(rows, columns), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    mpath = out / f"{name}.md"
    mpath.write_text("\n".join(lines))
    return jpath, mpath


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def print_table(caption: str, rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    print(f"\n{caption}\n" + markdown_table(rows, columns), flush=True)


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.median(xs)) if xs else float("nan")


def run_child(work, params: dict) -> int:
    """A bench's child process: run work(params) at one torch thread, end its Ray session whatever happens, and
    write the row it returns as JSON to params["out"] (the parent reads it)."""
    torch_threads(1)
    try:
        row = work(params)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    Path(params["out"]).write_text(json.dumps(row, default=_json_default))
    return 0
