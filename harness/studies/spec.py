"""Studies: a base run spec times a grid (or list) of config values, one MLflow run per cell.

    fedharness study runs/studies/demo.yaml [overrides...] [--parallel N] [--dry-run]

A study spec (YAML):

    name: demo                      # MLflow experiment (unless `experiment:` says otherwise)
    base: ../quickstart.yaml        # path relative to the study file, or an inline mapping
    overrides: [rounds=10]          # dotted overrides applied to the base, for every cell
    grid:                           # cartesian product over dotted config keys
      algorithm.name: [fedavg, local]
      seed: [0, 1, 2]
    cells:                          # and/or an explicit list; with a grid: cells x grid
      - {partition.alpha: 0.1}
      - {partition.scheme: pathological, partition.classes_per_client: 2}
    parallel_cells: 1               # at most this many cells at once (see below)

Why the pieces look the way they do:
- Every cell is expanded and validated (harness.config.load_config) before anything runs, so a
  typo in cell 30 is a one-line error at once, not after an hour of cells 1-29.
- A cell's identity is its config hash (RunConfig.config_hash: workers, tracking and
  checkpoint paths excluded). Re-running a study skips cells that have a FINISHED run with that
  hash in the experiment, resumes a KILLED (Ctrl-C) or stale RUNNING (hard kill) run from its
  checkpoint in the same MLflow run, and reruns FAILED cells from scratch. Completed runs are
  never touched.
- The run name is set through the `mlflow.runName` tag, not `RunConfig.name`, so the hash of a
  cell does not depend on the study's name.
- One Ray session serves every cell (a local cluster starts once per study, ~4 s). Cells run in
  sequence by default, each using all workers. With parallel_cells > 1, cells run in threads
  of this process and a cell only starts when the CPUs (and GPUs) its worker actors reserve fit
  in what the cluster has left: two cells that each got half their actors would otherwise wait
  for each other forever.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from harness.config import ConfigError, RunConfig, load_config
from harness.tracking import ensure_experiment
from partitions.spec import Strict

log = logging.getLogger(__name__)

STUDY_TAG = "fedharness.study"
CELL_TAG_PREFIX = "fedharness.cell."
STALE_REASON = "stale: left RUNNING by a process that died (hard kill); superseded by a study rerun"


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="study name; tags every run")
    base: str | dict[str, Any] = Field(default_factory=dict, description="run spec path (relative to the study "
                                                                         "file) or inline mapping")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides applied to the base")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values; cartesian product")
    cells: list[dict[str, Any]] = Field(default_factory=list, description="explicit cells (times the grid)")
    parallel_cells: int = Field(1, ge=1, description="at most this many cells at once")
    experiment: str | None = Field(None, description="MLflow experiment (default: the study name)")


@dataclass
class Cell:
    index: int
    values: dict[str, Any]
    config: RunConfig

    @property
    def hash(self) -> str:
        return self.config.config_hash()

    @property
    def label(self) -> str:
        return ", ".join(f"{_short_key(k)}={_text(v)}" for k, v in self.values.items()) or "base"

    @property
    def cpus(self) -> float:
        w = self.config.workers
        return w.num_workers * w.num_cpus if w.use_ray else 0.0

    @property
    def gpus(self) -> float:
        w = self.config.workers
        return w.num_workers * w.num_gpus if w.use_ray else 0.0


@dataclass
class Study:
    name: str
    experiment: str
    cells: list[Cell]
    parallel_cells: int = 1
    source: str = "<inline>"

    @property
    def tracking_uri(self) -> str:
        from harness.tracking import tracking_uri

        return tracking_uri(self.cells[0].config.tracking.uri)

    def tags(self, cell: Cell) -> dict[str, str]:
        tags = {STUDY_TAG: self.name, "fedharness.cell": cell.label, "mlflow.runName": cell.label}
        tags |= {f"{CELL_TAG_PREFIX}{k}": _text(v) for k, v in cell.values.items()}
        return tags


@dataclass
class CellState:
    """What MLflow already holds for a cell: `done`, `todo`, `rerun` (FAILED) or `resume`."""

    action: str
    run_id: str | None = None
    previous: str | None = None  # status of the run that decided the action


@dataclass
class StudyOutcome:
    skipped: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0


# ----- expansion ----------------------------------------------------------------------------------
def load_study(source: str | Path | dict[str, Any], overrides: list[str] | None = None,
               tracking_uri: str | None = None, parallel_cells: int | None = None) -> Study:
    """Read and expand a study spec; every cell is validated before this returns."""
    where = "<inline>"
    base_dir = Path.cwd()
    if isinstance(source, dict):
        tree = json.loads(json.dumps(source))
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"study spec {where!r} does not exist")
        tree = yaml.safe_load(path.read_text()) or {}
        base_dir = path.resolve().parent
        if not isinstance(tree, dict):
            raise ConfigError(f"study spec {where!r} must hold a mapping at top level")
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"study spec {where}: {_describe(err)}") from None
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"study spec {where}: grid.{key} is an empty list")
    if isinstance(spec.base, str):
        base_path = (base_dir / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        if not base_path.is_file():
            raise ConfigError(f"study spec {where}: base {spec.base!r} does not exist (looked for {base_path})")
        base_tree = yaml.safe_load(base_path.read_text()) or {}
    else:
        base_tree = spec.base
    experiment = spec.experiment or spec.name
    fixed = [*spec.overrides, *(overrides or []), f"tracking.experiment={json.dumps(experiment)}"]
    if tracking_uri:
        fixed.append(f"tracking.uri={json.dumps(tracking_uri)}")
    try:
        load_config(base_tree, fixed)
    except ConfigError as err:
        raise ConfigError(f"study spec {where}: base + overrides: {err}") from None

    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, values in enumerate(expand_values(spec)):
        cell_overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        label = ", ".join(f"{k}={_text(v)}" for k, v in values.items())
        try:
            cfg = load_config(base_tree, [*fixed, *cell_overrides])
        except ConfigError as err:
            raise ConfigError(f"study spec {where}: cell {i + 1} ({label}): {err}") from None
        cell = Cell(i, values, cfg)
        if cell.hash in seen:
            raise ConfigError(f"study spec {where}: cells {seen[cell.hash] + 1} and {i + 1} ({label}) "
                              f"are the same experiment (config hash {cell.hash})")
        seen[cell.hash] = i
        cells.append(cell)
    if len({c.config.tracking.uri for c in cells}) > 1:
        raise ConfigError(f"study spec {where}: all cells must use one tracking.uri")
    return Study(spec.name, experiment, cells, parallel_cells or spec.parallel_cells, where)


def expand_values(spec: StudySpec) -> list[dict[str, Any]]:
    """cells x grid, in spec order (the grid's last key varies fastest)."""
    keys = list(spec.grid)
    grid_points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())]
    explicit = spec.cells or [{}]
    out = []
    for cell in explicit:
        for point in grid_points:
            clash = set(cell) & set(point)
            if clash:
                raise ConfigError(f"study spec: key(s) {sorted(clash)} appear in both cells and grid")
            out.append({**cell, **point})
    return out


# ----- MLflow state -------------------------------------------------------------------------------
def _client(study: Study):
    from mlflow.tracking import MlflowClient

    return MlflowClient(study.tracking_uri)


def study_experiment(study: Study) -> str:
    """Create the study's experiment; with a SQLite store its artifacts live beside the database
    (MLflow's default is ./mlruns under whatever the current directory happens to be)."""
    return ensure_experiment(_client(study), study.tracking_uri, study.experiment)


def cell_states(study: Study, resume: bool = True) -> dict[int, CellState]:
    """Match cells to existing runs by config hash: FINISHED anywhere in the experiment wins."""
    client = _client(study)
    exp = client.get_experiment_by_name(study.experiment)
    by_hash: dict[str, list] = {}
    if exp is not None:
        for run in _search_all(client, exp.experiment_id, ""):
            h = run.data.tags.get("fedharness.config_hash")
            if h:
                by_hash.setdefault(h, []).append(run)
    states = {}
    for cell in study.cells:
        runs = sorted(by_hash.get(cell.hash, []), key=lambda r: r.info.start_time or 0, reverse=True)
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            states[cell.index] = CellState("done", finished[0].info.run_id, "FINISHED")
            continue
        unfinished = [r for r in runs if r.info.status in ("RUNNING", "KILLED", "SCHEDULED")]
        if unfinished:
            r = unfinished[0]
            ckpt = Path(cell.config.checkpoint_dir) / r.info.run_id / "meta.json"
            if resume and ckpt.is_file():
                states[cell.index] = CellState("resume", r.info.run_id, r.info.status)
                continue
            states[cell.index] = CellState("rerun", r.info.run_id, r.info.status)
            continue
        if runs:
            states[cell.index] = CellState("rerun", runs[0].info.run_id, runs[0].info.status)
        else:
            states[cell.index] = CellState("todo")
    return states


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _retire(client, run_id: str, status: str) -> None:
    """A run left RUNNING/KILLED that will not be resumed: end it, say why (the rerun is a new run)."""
    if status in ("RUNNING", "SCHEDULED"):
        client.set_tag(run_id, "fedharness.failure", STALE_REASON)
        client.set_terminated(run_id, status="KILLED")


# ----- running ------------------------------------------------------------------------------------
class StudyProgress:
    """Cells done/total as a bar; the engine's own per-run bar (round, accuracy) nests below it.
    One line per finished cell goes to stdout either way (CI logs)."""

    def __init__(self, study: Study, total: int, done: int, enabled: bool):
        from harness.progress import quiet

        self.enabled = enabled and not quiet()
        self.total = total
        self.done = done
        self.bar = None
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"study {study.name}", unit="cell", file=sys.stderr,
                            dynamic_ncols=True, position=0)
        self.running: dict[int, str] = {}
        self.lock = threading.Lock()

    def start(self, cell: Cell) -> None:
        with self.lock:
            self.running[cell.index] = cell.label
            self._postfix()

    def finish(self, cell: Cell, status: str, seconds: float, acc: float | None) -> None:
        with self.lock:
            self.running.pop(cell.index, None)
            if status != "KILLED":  # an interrupted cell is not done; the next study run picks it up
                self.done += 1
            acc_text = f"  personal_acc={acc:.4f}" if acc is not None else ""
            line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {status:<8} {cell.label}{acc_text}  " \
                   f"({seconds:.1f} s)"
            if self.bar is not None:
                self.bar.write(line, file=sys.stdout)
                self.bar.update(self.done - self.bar.n)
                self._postfix()
            else:
                print(line, flush=True)

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("; ".join(self.running.values())[:80], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StudyRunner:
    def __init__(self, study: Study, progress: bool = True, resume: bool = True, fail_fast: bool = False,
                 until_round: int | None = None):
        self.study = study
        self.until_round = until_round  # breadth first: every cell to this round, then stop (resumable)
        self.progress = progress
        self.resume = resume
        self.fail_fast = fail_fast
        self.outcome = StudyOutcome()
        self._init_lock = threading.Lock()
        self._threads: dict[int, int] = {}  # cell index -> thread ident (parallel mode)
        self._started_ray = False
        self._actors = None  # ActorCache: worker actors reused from cell to cell

    # -- plan
    def plan(self) -> tuple[list[Cell], dict[int, CellState]]:
        states = cell_states(self.study, resume=self.resume)
        if self.until_round is not None:
            for cell in self.study.cells:
                st = states[cell.index]
                if st.action == "resume" and _checkpointed_rounds(cell, st.run_id) >= self.until_round:
                    states[cell.index] = CellState("paused", st.run_id, st.previous)
        todo = [c for c in self.study.cells if states[c.index].action not in ("done", "paused")]
        return todo, states

    # -- run
    def run(self) -> StudyOutcome:
        t0 = time.perf_counter()
        study_experiment(self.study)
        todo, self.states = self.plan()
        self.outcome.skipped = [i for i, s in self.states.items() if s.action in ("done", "paused")]
        self.outcome.run_ids = {i: s.run_id for i, s in self.states.items() if s.action in ("done", "paused")}
        total = len(self.study.cells)
        self.bar = StudyProgress(self.study, total, total - len(todo), self.progress)
        try:
            if todo:
                self._init_ray(todo)
                if self.study.parallel_cells > 1 and len(todo) > 1:
                    self._run_parallel(todo)
                else:
                    for cell in todo:
                        self._run_cell(cell)
                        if self.fail_fast and self.outcome.failed:
                            break
        except KeyboardInterrupt:
            self.outcome.interrupted = True
        finally:
            self.bar.close()
            if self._actors is not None:
                self._actors.clear()
            if self._started_ray:
                import ray

                ray.shutdown()
            self.outcome.wall_s = time.perf_counter() - t0
        return self.outcome

    def _init_ray(self, todo: list[Cell]) -> None:
        """One Ray session for the whole study. A local cluster gets the machine's CPUs when cells
        may run in parallel, else what one cell asks for (as `fedharness run` would)."""
        ray_cells = [c for c in todo if c.config.workers.use_ray]
        if not ray_cells:
            return
        import ray

        from harness.executor import init_ray

        if ray.is_initialized():
            return
        first = max(ray_cells, key=lambda c: c.cpus).config
        cfg = first
        if self.study.parallel_cells > 1 and not first.workers.address:
            cpus = max(first.workers.num_workers * first.workers.num_cpus, os.cpu_count() or 1)
            cfg = first.model_copy(deep=True)
            cfg.workers.num_workers = max(1, int(cpus))
            cfg.workers.num_cpus = 1.0
        init_ray(cfg)
        self._started_ray = True

    def _engine(self, cell: Cell, state: CellState):
        from harness.config import validate
        from harness.engine import Engine

        client = _client(self.study)
        if state.action == "resume":
            meta = json.loads((Path(cell.config.checkpoint_dir) / state.run_id / "meta.json").read_text())
            try:
                with self._init_lock:
                    return Engine(validate(meta["config"]), progress=self.progress, resume_meta=meta), True
            except Exception as err:  # noqa: BLE001 - an unusable checkpoint: start over instead
                log.warning("cell %d: cannot resume run %s (%s); rerunning from scratch", cell.index + 1,
                            state.run_id, err)
                client.set_tag(state.run_id, "fedharness.failure", f"resume failed: {err}"[:4000])
                client.set_terminated(state.run_id, status="KILLED")
        elif state.action == "rerun" and state.run_id:
            _retire(client, state.run_id, state.previous or "")
        with self._init_lock:
            return Engine(cell.config, tags=self.study.tags(cell), progress=self.progress), False

    def _executor(self, cfg, data):
        from harness.executor import ActorCache, make_executor

        with self._init_lock:
            if self._actors is None:
                self._actors = ActorCache()
        return make_executor(cfg, data, cache=self._actors)

    def _run_cell(self, cell: Cell) -> None:
        from harness import interrupts

        interrupts.check()
        self._threads[cell.index] = threading.get_ident()
        self.bar.start(cell)
        t0 = time.perf_counter()
        engine = None
        try:
            engine, resumed = self._engine(cell, self.states[cell.index])
            result = engine.loop(executor_factory=self._executor, stop_after=self.until_round)
        except KeyboardInterrupt:
            self.bar.finish(cell, "KILLED", time.perf_counter() - t0, None)
            raise
        except Exception as err:  # noqa: BLE001 - a failed cell is recorded; the study goes on
            self.outcome.failed[cell.index] = f"{type(err).__name__}: {err}"
            if engine is not None:
                self.outcome.run_ids[cell.index] = engine.run_id
            log.error("cell %d (%s) failed: %s", cell.index + 1, cell.label, self.outcome.failed[cell.index])
            self.bar.finish(cell, "FAILED", time.perf_counter() - t0, None)
            return
        finally:
            self._threads.pop(cell.index, None)
        self.outcome.run_ids[cell.index] = result.run_id
        if resumed:
            self.outcome.resumed.append(cell.index)
            client = _client(self.study)
            client.set_tag(result.run_id, "fedharness.resumed", "true")
            try:
                client.delete_tag(result.run_id, "fedharness.failure")
            except Exception:  # noqa: BLE001 - the tag may not exist
                pass
        else:
            self.outcome.ran.append(cell.index)
        if not result.final:  # stopped at --until-round: resumable, not finished
            evaluated = [h for h in result.history if "personal_acc" in h]
            self.bar.finish(cell, f"paused@{len(result.history)}", time.perf_counter() - t0,
                            evaluated[-1]["personal_acc"] if evaluated else None)
            return
        self.bar.finish(cell, "resumed" if resumed else "FINISHED", time.perf_counter() - t0,
                        result.final.get("personal_acc"))

    def _run_parallel(self, todo: list[Cell]) -> None:
        _serialize_pyplot()
        capacity_cpu, capacity_gpu = _cluster_capacity()
        queue = deque(todo)
        running: dict[Future, Cell] = {}
        with ThreadPoolExecutor(max_workers=self.study.parallel_cells, thread_name_prefix="cell") as pool:
            try:
                while queue or running:
                    while queue and len(running) < self.study.parallel_cells:
                        cell = queue[0]
                        used_cpu = sum(c.cpus for c in running.values())
                        used_gpu = sum(c.gpus for c in running.values())
                        fits = (used_cpu + cell.cpus <= capacity_cpu + 1e-9
                                and used_gpu + cell.gpus <= capacity_gpu + 1e-9)
                        if running and not fits:
                            break
                        queue.popleft()
                        running[pool.submit(self._run_cell, cell)] = cell
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        running.pop(fut)
                        fut.result()
                    if self.fail_fast and self.outcome.failed:
                        queue.clear()
            except KeyboardInterrupt:
                queue.clear()
                for ident in list(self._threads.values()):
                    _raise_in_thread(ident, KeyboardInterrupt)
                for fut in running:
                    try:
                        fut.result()
                    except KeyboardInterrupt:
                        pass
                raise


def _checkpointed_rounds(cell: Cell, run_id: str | None) -> int:
    """Rounds a run's checkpoint holds (0 when it has none or it cannot be read)."""
    path = Path(cell.config.checkpoint_dir) / str(run_id) / "meta.json"
    try:
        return int(json.loads(path.read_text())["done_round"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _cluster_capacity() -> tuple[float, float]:
    try:
        import ray

        if ray.is_initialized():
            res = ray.cluster_resources()
            return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
    except Exception:  # noqa: BLE001
        pass
    return float("inf"), float("inf")


def _raise_in_thread(ident: int, exc: type[BaseException]) -> None:
    """Deliver Ctrl-C to a cell thread: its engine then ends its run as KILLED, as in sequential mode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


_PYPLOT_LOCK = threading.Lock()


def _serialize_pyplot() -> None:
    """pyplot keeps global figure state; the engine plots each run's curves at its end, so cells
    finishing together in threads must take turns."""
    import harness.plots as plots

    if getattr(plots.plot_run_curves, "_serialized", False):
        return
    original = plots.plot_run_curves

    def locked(*args, **kwargs):
        with _PYPLOT_LOCK:
            return original(*args, **kwargs)

    locked._serialized = True
    plots.plot_run_curves = locked


def run_study(study: Study, progress: bool = True, resume: bool = True, fail_fast: bool = False,
              until_round: int | None = None) -> StudyOutcome:
    return StudyRunner(study, progress=progress, resume=resume, fail_fast=fail_fast, until_round=until_round).run()


# ----- CLI ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness study", description="run every cell of a study spec "
                                "(one MLflow run per cell; re-running skips FINISHED cells)")
    p.add_argument("spec", help="study spec YAML (runs/studies/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every cell, e.g. rounds=5")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--parallel", type=int, help="cells at once (overrides parallel_cells; limited by free CPUs)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what a run would do, run nothing")
    p.add_argument("--no-resume", action="store_true", help="rerun interrupted cells from scratch")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    p.add_argument("--until-round", type=int, metavar="R",
                   help="breadth first: take every cell to round R, then stop it (resumable; run again with a "
                        "larger R, or without the flag, to continue each cell from its checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (CI)")
    p.add_argument("--no-table", action="store_true", help="skip the leaderboard printed at the end")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.quiet:
        os.environ["FEDHARNESS_QUIET"] = "1"
    from harness import interrupts

    interrupts.install()
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    if args.until_round is not None and args.until_round < 1:
        raise ConfigError(f"--until-round must be >= 1, got {args.until_round}")
    study = load_study(args.spec, args.overrides, tracking_uri=args.tracking_uri, parallel_cells=args.parallel)
    if args.dry_run:
        return _print_plan(study, resume=not args.no_resume)
    n = len(study.cells)
    print(f"study {study.name}: {n} cells -> experiment {study.experiment!r} at {study.tracking_uri}", flush=True)
    outcome = run_study(study, progress=not args.quiet, resume=not args.no_resume, fail_fast=args.fail_fast,
                        until_round=args.until_round)
    print(f"study {study.name}: {len(outcome.skipped)} already finished, {len(outcome.ran)} run, "
          f"{len(outcome.resumed)} resumed, {len(outcome.failed)} failed, "
          f"{n - len(outcome.skipped) - len(outcome.ran) - len(outcome.resumed) - len(outcome.failed)} not run; "
          f"{outcome.wall_s:.1f} s", flush=True)
    for i, reason in sorted(outcome.failed.items()):
        print(f"  cell {i + 1} ({study.cells[i].label}) failed: {reason}", file=sys.stderr)
    if outcome.interrupted:
        print(f"fedharness: study interrupted; finished runs are kept. Run `fedharness study {args.spec}` again "
              "to complete the missing cells.", file=sys.stderr)
        return 130
    if args.until_round is not None:
        print(f"study {study.name}: cells stop at round {args.until_round}; run again with a larger --until-round "
              "(or without it) to continue them", flush=True)
    if not args.no_table and not outcome.failed and args.until_round is None:
        from harness.leaderboard import print_leaderboard

        print_leaderboard(study.tracking_uri, study.experiment, study=study.name)
    return 1 if outcome.failed else 0


def _print_plan(study: Study, resume: bool) -> int:
    from harness.tracking import tracking_uri

    path = tracking_uri(study.cells[0].config.tracking.uri)
    states = cell_states(study, resume=resume) if _store_exists(path) else {}
    print(f"study {study.name}: {len(study.cells)} cells -> experiment {study.experiment!r} at {path}")
    for cell in study.cells:
        st = states.get(cell.index, CellState("todo"))
        extra = f" ({st.previous} run {st.run_id})" if st.run_id else ""
        print(f"  {cell.index + 1:>3}  {st.action:<6} {cell.hash}  {cell.label}{extra}")
    return 0


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


# ----- helpers ------------------------------------------------------------------------------------
def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown key {loc!r}; allowed keys: {', '.join(StudySpec.model_fields)}"
    if e["type"] == "missing":
        return f"missing key {loc!r}"
    return f"{loc}: {e['msg']} (got {json.dumps(e.get('input'), default=str)})"


def _short_key(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


if __name__ == "__main__":
    raise SystemExit(main())
