"""Running a study: every cell that is not done yet, one MLflow run per cell, in one process.

Why it runs the way it does:
- One Ray session serves every cell (a local cluster starts once per study, ~4 s), and worker
  actors are kept from cell to cell in an ActorCache (reconfigured, not restarted).
- Cells run in sequence by default, each using all workers. With parallel_cells > 1, cells run
  in threads of this process and a cell only starts when the CPUs (and GPUs) its worker actors
  reserve fit in what the cluster has left: two cells that each got half their actors would
  otherwise wait for each other forever.
- A failed cell is recorded and the study goes on (unless fail_fast); Ctrl-C reaches every cell
  thread, each engine ends its run as KILLED, and the next study run resumes it.
- Engines are built through harness.engine.open_run / reopen_run only: what a run does with
  MLflow, checkpoints and its progress bar is the engine's business, what a study does with a
  run's MLflow record (resume, retire, mark) is harness.studies.state's.
- Engines are built one at a time (`_init_lock`): building one loads and partitions the data
  set and creates the MLflow run, which threads must not do into one cache/store at once.
- Another process may run the same study on the same store at once: a cell runs only while this
  process holds its claim (harness.studies.claims). A cell claimed elsewhere is put back at the end
  of the queue; met again, it is waited for. Once a claim is held the cell's state is read again
  from MLflow, so a cell the other process finished is skipped, one it paused stays paused, and
  one it left behind (killed) is resumed or rerun as usual: every cell runs once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from harness.studies.claims import Claim, claim_path
from harness.studies.progress import StudyProgress
from harness.studies.spec import Cell, Study
from harness.studies.state import (
    CellState,
    cell_state,
    cell_states,
    checkpointed_rounds,
    mark_resume_failed,
    mark_resumed,
    mlflow_client,
    retire,
    study_experiment,
)

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    """Cell indices by what happened to them in this study run, and each cell's MLflow run."""

    skipped: list[int] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    wall_s: float = 0.0


class StudyRunner:
    def __init__(self, study: Study, progress: bool = True, resume: bool = True, fail_fast: bool = False,
                 until_round: int | None = None):
        self.study = study
        self.until_round = until_round  # breadth first: every cell to this round, then stop (resumable)
        self.progress = progress  # the study's bar and each engine's bar; per-cell lines are printed anyway
        self.resume = resume
        self.fail_fast = fail_fast
        self.outcome = StudyOutcome()
        self._init_lock = threading.Lock()
        self._threads: dict[int, int] = {}  # cell index -> thread ident (parallel mode)
        self._started_ray = False
        self._actors = None  # ActorCache: worker actors reused from cell to cell

    # -- plan
    def plan(self) -> tuple[list[Cell], dict[int, CellState]]:
        """The cells to run now and every cell's state; with until_round, a cell whose checkpoint
        already reaches that round is `paused` (nothing to do this time)."""
        states = cell_states(self.study, resume=self.resume)
        states = {cell.index: self._paused(cell, states[cell.index]) for cell in self.study.cells}
        todo = [c for c in self.study.cells if states[c.index].action not in ("done", "paused")]
        return todo, states

    def _paused(self, cell: Cell, st: CellState) -> CellState:
        if (self.until_round is not None and st.action == "resume"
                and checkpointed_rounds(cell, st.run_id) >= self.until_round):
            return CellState("paused", st.run_id, st.previous)
        return st

    # -- run
    def run(self) -> StudyOutcome:
        t0 = time.perf_counter()
        study_experiment(self.study)
        todo, self.states = self.plan()
        self.outcome.skipped = [i for i, s in self.states.items() if s.action in ("done", "paused")]
        self.outcome.run_ids = {i: s.run_id for i, s in self.states.items() if s.action in ("done", "paused")}
        total = len(self.study.cells)
        self.bar = StudyProgress(self.study, total, total - len(todo), enabled=self.progress)
        try:
            if todo:
                self._init_ray(todo)
                if self.study.parallel_cells > 1 and len(todo) > 1:
                    self._run_parallel(todo)
                else:
                    self._run_sequential(todo)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
        finally:
            self.bar.close()
            if self._actors is not None:
                self._actors.clear()
            if self._started_ray:
                from harness.engine.executor import shutdown_ray

                shutdown_ray()
            self.outcome.wall_s = time.perf_counter() - t0
        return self.outcome

    def _run_sequential(self, todo: list[Cell]) -> None:
        queue, waited = deque(todo), set()
        while queue:
            cell = queue.popleft()
            if not self._run_claimed(cell, wait=cell.index in waited):
                waited.add(cell.index)  # running in another process: come back to it at the end
                queue.append(cell)
            if self.fail_fast and self.outcome.failed:
                break

    def _run_claimed(self, cell: Cell, wait: bool) -> bool:
        """Run the cell while holding its claim; False (nothing done) if another process holds it and
        `wait` is False. With the claim held, the cell's state is read again (see the module's notes)."""
        claim = Claim(claim_path(self.study, cell))
        if not claim.acquire(wait=False):
            if not wait:
                return False
            print(f"cell {cell.index + 1} ({cell.label}): another process runs it; waiting for it", flush=True)
            claim.acquire(wait=True)
        try:
            state = self._paused(cell, cell_state(self.study, cell, resume=self.resume))
            if state.action in ("done", "paused"):
                self.outcome.skipped.append(cell.index)
                self.outcome.run_ids[cell.index] = state.run_id
                self.bar.finish(cell, "skipped", 0.0, None, note=f"({state.previous} in run {state.run_id}, "
                                                                 "by another process)")
                return True
            self.states[cell.index] = state
            self._run_cell(cell)
        finally:
            claim.release()
        return True

    def _init_ray(self, todo: list[Cell]) -> None:
        """One Ray session for the whole study. A local cluster gets the machine's CPUs when cells
        may run in parallel, else what one cell asks for (as `fedharness run` would)."""
        ray_cells = [c for c in todo if c.config.workers.use_ray]
        if not ray_cells:
            return
        import ray

        from harness.engine.cluster import check_resources, init_ray

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
        for cell in ray_cells:  # a cell whose actors can never be placed fails the study now, in one line
            check_resources(cell.config)

    def _engine(self, cell: Cell, state: CellState):
        """(engine, resumed): the cell's run reopened from its checkpoint, or a new run. A
        checkpoint that cannot be reopened is recorded on its run, and the cell starts over."""
        from harness.engine import open_run, read_meta, reopen_run

        client = mlflow_client(self.study)
        if state.action == "resume":
            try:
                meta = read_meta(cell.config.checkpoint_dir, state.run_id)
                with self._init_lock:
                    return reopen_run(meta, progress=self.progress), True
            except Exception as err:  # noqa: BLE001 - an unusable checkpoint: start over instead
                log.warning("cell %d: cannot resume run %s (%s); rerunning from scratch", cell.index + 1,
                            state.run_id, err)
                mark_resume_failed(client, state.run_id, err)
        elif state.action == "rerun" and state.run_id:
            retire(client, state.run_id, state.previous or "")
        with self._init_lock:
            return open_run(cell.config, tags=self.study.tags(cell), progress=self.progress), False

    def _executor(self, cfg, data):
        """The engine's executor_factory: worker actors come from (and go back to) the study's cache."""
        from harness.engine.executor import ActorCache, make_executor

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
            mark_resumed(mlflow_client(self.study), result.run_id)
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
        """Cells in threads, in spec order; the next cell waits until its actors fit (see above)."""
        capacity_cpu, capacity_gpu = _cluster_capacity()
        queue, waited = deque(todo), set()
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
                        running[pool.submit(self._run_claimed, cell, cell.index in waited)] = cell
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        cell = running.pop(fut)
                        if not fut.result():  # claimed by another process: wait for it when met again
                            waited.add(cell.index)
                            queue.append(cell)
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


def run_study(study: Study, progress: bool = True, resume: bool = True, fail_fast: bool = False,
              until_round: int | None = None) -> StudyOutcome:
    return StudyRunner(study, progress=progress, resume=resume, fail_fast=fail_fast, until_round=until_round).run()


def _cluster_capacity() -> tuple[float, float]:
    """CPUs and GPUs of the Ray cluster (unbounded without Ray: in-process cells reserve nothing)."""
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
