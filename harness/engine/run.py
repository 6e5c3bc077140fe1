"""A run: build everything, then loop rounds -> evaluate -> tell the listeners -> checkpoint.

A run is resumable after any crash: each round ends with an atomic checkpoint (global model,
client-state store, clock totals, metric history; harness.engine.checkpoint); every random draw
is derived from (seed, purpose, round, client), so nothing else needs saving for a bit-identical
resume. What watches a run (MLflow, the progress bar, the per-client log, a benchmark's timers)
is a listener (harness.engine.listeners); the engine itself only computes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import interrupts
from harness.config import RunConfig, validate
from harness.engine.checkpoint import Checkpoint, read_meta
from harness.engine.clock import DeviceProfiles, VirtualClock
from harness.engine.evaluate import evaluate_all
from harness.engine.executor import make_executor
from harness.engine.listeners import ClientLog, RoundListener, RoundRecord, RunStart
from harness.engine.progress import ProgressBar
from harness.engine.rounds import RunFailed, train_round
from harness.engine.store import make_store
from harness.engine.worker import build_algorithm
from partitions import build_federated_dataset

__all__ = ["Engine", "RunFailed", "RunResult", "open_run", "read_meta", "reopen_run", "resume", "run"]


@dataclass
class RunResult:
    run_id: str | None
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    clients: pd.DataFrame | None = None
    global_vec: np.ndarray | None = None
    client_log: pd.DataFrame | None = None


# ----- entry points ------------------------------------------------------------------------------------------
def open_run(cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True,
             listeners: Sequence[RoundListener] = (), evaluate: bool = True) -> Engine:
    """A new run, built and ready to loop: tracked in MLflow when cfg.tracking.enabled."""
    tracker = _tracker(cfg, tags=tags)
    try:
        return Engine(cfg, run_id=tracker.run_id if tracker else None,
                      listeners=_standard(tracker, progress, listeners), evaluate=evaluate)
    except BaseException as err:  # e.g. unreadable data: the MLflow run must not stay RUNNING
        if tracker is not None:
            tracker.end("FAILED" if isinstance(err, Exception) else "KILLED", f"{type(err).__name__}: {err}")
        raise


def reopen_run(meta: dict, progress: bool = True, listeners: Sequence[RoundListener] = ()) -> Engine:
    """The run of a checkpoint (its meta.json), ready to continue in the same MLflow run."""
    cfg = validate(meta["config"])
    tracker = _tracker(cfg, run_id=meta["run_id"])
    return Engine(cfg, run_id=meta["run_id"], listeners=_standard(tracker, progress, listeners), resume_meta=meta)


def run(cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True, stop_after: int | None = None,
        executor_factory=make_executor, listeners: Sequence[RoundListener] = ()) -> RunResult:
    """Start a run. `stop_after` ends the loop early, leaving a resumable run (as a crash would);
    `executor_factory(cfg, data)` lets tests inject faults into the worker pool."""
    engine = open_run(cfg, tags=tags, progress=progress, listeners=listeners)
    return engine.loop(stop_after=stop_after, executor_factory=executor_factory)


def resume(run_id: str, checkpoint_dir: str = ".fedharness/checkpoints", progress: bool = True) -> RunResult:
    return reopen_run(read_meta(checkpoint_dir, run_id), progress=progress).loop()


def _tracker(cfg: RunConfig, tags: dict[str, str] | None = None, run_id: str | None = None):
    if not cfg.tracking.enabled:
        return None
    from harness.tracking import MlflowListener

    return MlflowListener(cfg, tags=tags, run_id=run_id)


def _standard(tracker, progress: bool, extra: Sequence[RoundListener]) -> list[RoundListener]:
    standard: list[RoundListener] = [ClientLog()]
    if tracker is not None:
        standard.append(tracker)
    if progress:
        standard.append(ProgressBar())
    return [*standard, *extra]


# ----- the engine ----------------------------------------------------------------------------------------------
class Engine:
    def __init__(self, cfg: RunConfig, run_id: str | None = None, listeners: Sequence[RoundListener] = (),
                 resume_meta: dict | None = None, evaluate: bool = True):
        self.cfg = cfg
        self.evaluate = evaluate  # False only for timing benchmarks of the training part
        self.data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
        self.algo, _, self.global_vec = build_algorithm(cfg, self.data)
        self.unseen = set(self.data.meta.get("unseen_clients", []))
        profiles = DeviceProfiles.draw(cfg.budget, self.data.num_clients, cfg.seed)
        self.clock = VirtualClock(cfg.budget, profiles, cfg.train.batch_size, cfg.seed)
        self.k = cfg.sampled_per_round(len(self.data.train_clients))
        self.run_id = run_id or f"local-{int(time.time() * 1000)}"
        self.listeners = list(listeners)
        self.client_log = next((x for x in self.listeners if isinstance(x, ClientLog)), None)
        self.checkpoint = Checkpoint(Path(cfg.checkpoint_dir) / self.run_id)
        self.store = make_store(cfg.store.backend, cfg.store.path or (self.checkpoint.folder / "store"))
        self.start_round = 0
        self.history: list[dict[str, float]] = []
        self.totals = {"sim_time": 0.0, "bytes_up_total": 0.0, "bytes_down_total": 0.0}
        if resume_meta:
            self._restore(resume_meta)
        start = RunStart(self.run_id, cfg, self.data, self.checkpoint.folder, self.start_round, bool(resume_meta))
        for listener in self.listeners:
            listener.on_start(start)

    @property
    def ckpt(self) -> Path:
        return self.checkpoint.folder

    # ----- checkpoint ---------------------------------------------------------------------------------------
    def _meta(self, done_round: int) -> dict:
        return {"run_id": self.run_id, "config": self.cfg.model_dump(mode="json"), "done_round": done_round,
                "history": self.history, "totals": self.totals}

    def _write_checkpoint(self, done_round: int) -> None:
        self.checkpoint.write(self._meta(done_round), self.global_vec, self.store, self.algo.server_state())

    def _restore(self, meta: dict) -> None:
        done = meta["done_round"]
        self.start_round = done + 1
        self.history = meta["history"]
        self.totals = meta["totals"]
        if done >= 0:
            self.global_vec = self.checkpoint.global_vector()
            self.algo.load_server_state(self.checkpoint.server_state())
        self.store.restore(self.checkpoint.folder, done)

    # ----- the loop -----------------------------------------------------------------------------------------
    def loop(self, stop_after: int | None = None, executor_factory: Callable = make_executor) -> RunResult:
        cfg = self.cfg
        result = RunResult(self.run_id, cfg, self.history)
        executor = None
        status, reason = "FINISHED", None
        try:
            executor = executor_factory(cfg, self.data)
            if self.start_round == 0:
                self._timed_checkpoint(-1)  # resumable even if the first round never finishes
            clients = None
            for rnd in range(self.start_round, cfg.rounds):
                interrupts.check()  # a Ctrl-C whose KeyboardInterrupt something swallowed
                last = rnd == cfg.rounds - 1
                stopping = stop_after is not None and rnd + 1 >= stop_after
                evaluated = self._one_round(rnd, executor, last, stopping)
                clients = evaluated if evaluated is not None else clients
                if stopping and not last:
                    status = "RUNNING"  # interrupted on purpose; resumable
                    break
            else:
                result.clients = clients
                result.final = final_metrics(self.history)
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (Ctrl-C); resume with: fedharness resume " + self.run_id
            raise
        except Exception as err:  # noqa: BLE001 - recorded by the listeners (MLflow: FAILED + reason), re-raised
            status, reason = "FAILED", f"{type(err).__name__}: {err}"
            raise
        finally:
            if executor is not None:
                executor.shutdown()
            result.history = self.history
            result.global_vec = self.global_vec
            result.client_log = self.client_log.read() if self.client_log else None
            for listener in self.listeners:
                listener.on_end(result, status, reason)
        return result

    def _one_round(self, rnd: int, executor, last: bool, stopping: bool) -> pd.DataFrame | None:
        t0 = time.perf_counter()
        out = train_round(rnd, algo=self.algo, clock=self.clock, store=self.store, data=self.data, k=self.k,
                          global_vec=self.global_vec, totals=self.totals, executor=executor,
                          nan_policy=self.cfg.nan_policy)
        self.global_vec, self.totals = out.global_vec, out.totals
        metrics, clients = dict(out.metrics), None
        if self.evaluate and ((rnd + 1) % self.cfg.eval_every == 0 or last):
            t = time.perf_counter()
            eval_metrics, clients = evaluate_all(rnd, data=self.data, store=self.store, pending=out.new_states,
                                                 global_vec=self.global_vec, executor=executor, unseen=self.unseen)
            out.timings["evaluate"] = time.perf_counter() - t
            metrics |= eval_metrics
        metrics["wall_round_time"] = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append({"round": rnd + 1, **metrics})
        record = RoundRecord(rnd + 1, metrics, out.client_rows, out.timings)
        for listener in self.listeners:
            listener.on_round(record)
        t = time.perf_counter()
        spent = {"checkpoint": 0.0}
        if self.store.checkpoint_due(rnd, self.cfg.checkpoint_every, last or stopping):
            self.store.commit(out.new_states, rnd, mark_done=lambda: spent.update(checkpoint=self._timed_write(rnd)))
        else:
            self.store.commit(out.new_states, rnd)
        spent["store_commit"] = time.perf_counter() - t - spent["checkpoint"]
        for listener in self.listeners:
            listener.on_checkpoint(rnd + 1, spent)
        return clients

    def _timed_write(self, done_round: int) -> float:
        t = time.perf_counter()
        self._write_checkpoint(done_round)
        return time.perf_counter() - t

    def _timed_checkpoint(self, done_round: int) -> None:
        spent = {"checkpoint": self._timed_write(done_round), "store_commit": 0.0}
        for listener in self.listeners:
            listener.on_checkpoint(done_round + 1, spent)

    def discard_checkpoint(self) -> None:
        """Remove this run's checkpoint folder (and a disk store inside it)."""
        shutil.rmtree(self.checkpoint.folder, ignore_errors=True)


def final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """Final = last evaluated round; best_* = max over evaluated rounds (both reported, named)."""
    evaluated = [h for h in history if "personal_acc" in h]
    if not evaluated:
        return {}
    final = {k: v for k, v in evaluated[-1].items() if k != "round"}
    keys = ["personal_acc", "personal_acc_mean", "personal_acc_worst10", "global_acc"]
    keys += ["personal_ft_acc"] if "personal_ft_acc" in evaluated[-1] else []
    for key in keys:
        values = np.array([h[key] for h in evaluated], dtype=np.float64)
        final[f"best_{key}"] = float(np.nanmax(values)) if not np.isnan(values).all() else float("nan")
    final["rounds"] = float(history[-1]["round"])
    return final
