"""A run: build everything, then loop rounds -> evaluate -> tell the listeners -> checkpoint.

A run is resumable after any crash: each round ends with an atomic checkpoint (global model,
client-state store, clock totals, metric history; harness.engine.checkpoint); every random draw
is derived from (seed, purpose, round, client), so nothing else needs saving for a bit-identical
resume. What watches a run (MLflow, the progress bar, the per-client log, a benchmark's timers)
is a listener (harness.engine.listeners); the engine itself only computes.

Nothing lost, nothing silent: a run is built (data loaded and checked, model, device profiles) before
its MLflow run exists, so bad input leaves no trace; its first checkpoint is written before any worker
starts; a failure after that ends the MLflow run FAILED with the reason. A round in which no client
update survives fails the run (empty_round_policy=fail) or is counted and warned about (skip). A resume
checks the checkpoint (harness.engine.checkpoint.verify), the partition it was taken on and the run's
state, and refuses a FINISHED run, before it touches MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import interrupts
from harness.config import ConfigError, RunConfig, validate
from harness.engine.checkpoint import Checkpoint, CheckpointError, read_meta
from harness.engine.evaluate import evaluate_all
from harness.engine.executor import make_executor
from harness.engine.listeners import ClientLog, RoundListener, RoundRecord, RunStart
from harness.engine.parts import Parts, build_parts
from harness.engine.progress import ProgressBar
from harness.engine.rounds import RunFailed, train_round
from harness.engine.store import make_store

log = logging.getLogger(__name__)

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
    empty_rounds: list[int] = field(default_factory=list)  # rounds without a surviving update (policy skip)


# ----- entry points ------------------------------------------------------------------------------------------
def open_run(cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True,
             listeners: Sequence[RoundListener] = (), evaluate: bool = True) -> Engine:
    """A new run, built and ready to loop: tracked in MLflow when cfg.tracking.enabled."""
    parts = build_parts(cfg, evaluate=evaluate)  # bad input stops here: no MLflow run, no checkpoint
    tracker = _tracker(cfg, tags=tags)
    with _ended_on_error(tracker, previous=None):
        return Engine(cfg, run_id=tracker.run_id if tracker else None, evaluate=evaluate, parts=parts,
                      listeners=_standard(tracker, progress, listeners))


def reopen_run(meta: dict, progress: bool = True, listeners: Sequence[RoundListener] = (),
               checkpoint_dir: str | Path | None = None) -> Engine:
    """The run of a checkpoint (its meta.json, from read_meta), ready to continue in the same MLflow run.

    `checkpoint_dir` is where the checkpoint is now (default: where the run wrote it); state is read from
    there and written there. Everything is checked before the MLflow run is touched: the config, the run's
    status (a FINISHED run is refused), every file's sha256, the partition it was taken on."""
    run_id = meta["run_id"]
    folder = Path(checkpoint_dir if checkpoint_dir is not None else meta["config"].get(
        "checkpoint_dir", RunConfig.model_fields["checkpoint_dir"].default)) / run_id
    try:
        cfg = validate(meta["config"])
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {folder / 'meta.json'}: its config is not valid here: {err}") from None
    cfg.checkpoint_dir = str(folder.parent)
    if meta["status"] == "FINISHED":
        raise CheckpointError(f"run {run_id} is FINISHED (all {cfg.rounds} rounds); nothing to resume")
    checkpoint = Checkpoint(folder)
    checkpoint.verify(meta)
    parts = build_parts(cfg)
    if meta["done_round"] >= 0:
        checkpoint.global_vector(meta, like=parts.global_vec)  # the model's shape, before MLflow is touched
    if parts.data.digest() != meta["partition"]:
        raise CheckpointError(f"checkpoint {folder / 'meta.json'} was taken on another partition than the one built "
                              f"now (data files or partition code changed since); cannot resume it")
    previous = _mlflow_status(cfg, run_id)
    if previous == "FINISHED":
        raise CheckpointError(f"run {run_id} is FINISHED in MLflow; nothing to resume")
    tracker = _tracker(cfg, run_id=run_id)
    with _ended_on_error(tracker, previous=previous):
        return Engine(cfg, run_id=run_id, listeners=_standard(tracker, progress, listeners), resume_meta=meta,
                      parts=parts)


def run(cfg: RunConfig, tags: dict[str, str] | None = None, progress: bool = True, stop_after: int | None = None,
        executor_factory: Callable | None = None, listeners: Sequence[RoundListener] = ()) -> RunResult:
    """Start a run. `stop_after` ends the loop early, leaving a resumable run (as a crash would);
    `executor_factory(cfg, data)` lets tests inject faults into the worker pool."""
    engine = open_run(cfg, tags=tags, progress=progress, listeners=listeners)
    return engine.loop(stop_after=stop_after, executor_factory=executor_factory)


def resume(run_id: str, checkpoint_dir: str = ".fedharness/checkpoints", progress: bool = True) -> RunResult:
    meta = read_meta(checkpoint_dir, run_id)
    return reopen_run(meta, progress=progress, checkpoint_dir=checkpoint_dir).loop()


def _tracker(cfg: RunConfig, tags: dict[str, str] | None = None, run_id: str | None = None):
    if not cfg.tracking.enabled:
        return None
    from harness.tracking import MlflowListener

    with _mlflow_store(cfg):
        return MlflowListener(cfg, tags=tags, run_id=run_id)


@contextlib.contextmanager
def _mlflow_store(cfg: RunConfig):
    """An MLflow store that cannot be opened (tracking.uri=bogus://x) is a one-line config error."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever MLflow raises for a store it cannot open
        from harness.tracking import tracking_uri

        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:240]
        raise ConfigError(f"tracking.uri={tracking_uri(cfg.tracking.uri)!r}: MLflow cannot use this store "
                          f"({type(err).__name__}: {text})") from None


def _mlflow_status(cfg: RunConfig, run_id: str) -> str | None:
    """The MLflow status of the run a checkpoint belongs to (None without tracking)."""
    if not cfg.tracking.enabled:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.tracking import tracking_uri

    uri = tracking_uri(cfg.tracking.uri)
    with _mlflow_store(cfg):
        client = MlflowClient(uri)
    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        raise CheckpointError(f"run {run_id} is not in the MLflow store {uri} (tracking.uri)") from None


@contextlib.contextmanager
def _ended_on_error(tracker, previous: str | None):
    """A run whose engine could not be built: a new one ends FAILED (KILLED on Ctrl-C) with the reason; a
    resumed one goes back to the status it had."""
    try:
        yield
    except BaseException as err:
        if tracker is not None:
            if previous is None:
                killed = isinstance(err, KeyboardInterrupt)
                tracker.end("KILLED" if killed else "FAILED", "interrupted (Ctrl-C)" if killed
                            else f"{type(err).__name__}: {err}")
            elif previous != "RUNNING":
                tracker.client.set_terminated(tracker.run_id, status=previous)
        raise


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
                 resume_meta: dict | None = None, evaluate: bool = True, parts: Parts | None = None):
        self.cfg = cfg
        self.evaluate = evaluate  # False only for timing benchmarks of the training part
        parts = parts or build_parts(cfg, evaluate=evaluate)
        self.data, self.algo, self.global_vec, self.clock, self.k = (parts.data, parts.algo, parts.global_vec,
                                                                     parts.clock, parts.k)
        self.cohort_size = cfg.train.cohort_size if parts.batched else 0
        self.eval_ids = parts.eval_ids
        self.unseen = set(self.data.meta.get("unseen_clients", []))
        self.run_id = run_id or f"local-{int(time.time() * 1000)}"
        self.listeners = list(listeners)
        self.client_log = next((x for x in self.listeners if isinstance(x, ClientLog)), None)
        self.checkpoint = Checkpoint(Path(cfg.checkpoint_dir) / self.run_id)
        self.store = make_store(cfg.store.backend, cfg.store.path or (self.checkpoint.folder / "store"))
        self.start_round = 0
        self.history: list[dict[str, float]] = []
        self.totals = {"sim_time": 0.0, "bytes_up_total": 0.0, "bytes_down_total": 0.0}
        self.partition_digest = self.data.digest()
        self.meta: dict | None = None  # the meta.json of the last checkpoint
        self._first_checkpoint_s: float | None = None
        if resume_meta:
            self._restore(resume_meta)
        else:  # before any worker starts: a driver killed from now on leaves a resumable run
            self._first_checkpoint_s = self._timed_write(-1)
        start = RunStart(self.run_id, cfg, self.data, self.checkpoint.folder, self.start_round, bool(resume_meta))
        for listener in self.listeners:
            listener.on_start(start)

    @property
    def ckpt(self) -> Path:
        return self.checkpoint.folder

    # ----- checkpoint ---------------------------------------------------------------------------------------
    def _meta(self, done_round: int) -> dict:
        return {"run_id": self.run_id, "config": self.cfg.model_dump(mode="json"), "done_round": done_round,
                "history": self.history, "totals": self.totals, "partition": self.partition_digest,
                "status": "RUNNING"}

    def _write_checkpoint(self, done_round: int) -> None:
        self.meta = self.checkpoint.write(self._meta(done_round), self.global_vec, self.store,
                                          self.algo.server_state())

    def _restore(self, meta: dict) -> None:
        """Continue from a checkpoint that reopen_run verified."""
        done = meta["done_round"]
        self.start_round = done + 1
        self.history = meta["history"]
        self.totals = meta["totals"]
        self.meta = meta
        if done >= 0:
            self.global_vec = self.checkpoint.global_vector(meta, like=self.global_vec)
            self.algo.load_server_state(self.checkpoint.server_state(meta))
        self.store.restore(self.checkpoint.state_folder(meta), done)

    # ----- the loop -----------------------------------------------------------------------------------------
    def loop(self, stop_after: int | None = None, executor_factory: Callable | None = None) -> RunResult:
        cfg = self.cfg
        result = RunResult(self.run_id, cfg, self.history)
        executor = None
        # whatever ends the loop other than its own finish, a pause or a recorded exception (SystemExit from
        # Ray's SIGTERM handler: `kill`, a scheduler's preemption) leaves the run KILLED, resumable, never FINISHED
        status, reason = "KILLED", "terminated (e.g. SIGTERM); resume with: fedharness resume " + self.run_id
        try:
            if self._first_checkpoint_s is not None:  # written when the engine was built
                self._notify_checkpoint(0, {"checkpoint": self._first_checkpoint_s, "store_commit": 0.0})
                self._first_checkpoint_s = None
            executor = (executor_factory or make_executor)(cfg, self.data)
            clients = None
            for rnd in range(self.start_round, cfg.rounds):
                interrupts.check()  # a Ctrl-C whose KeyboardInterrupt something swallowed
                last = rnd == cfg.rounds - 1
                stopping = stop_after is not None and rnd + 1 >= stop_after
                evaluated = self._one_round(rnd, executor, last, stopping)
                clients = evaluated if evaluated is not None else clients
                if stopping and not last:
                    status, reason = "RUNNING", None  # interrupted on purpose; resumable
                    break
            else:
                if self.history and all(h.get("clients_kept") == 0 for h in self.history):
                    raise RunFailed(f"no client update survived in any of the {len(self.history)} rounds: the "
                                    f"model was never trained (empty_round_policy=skip)")
                result.clients = clients
                result.final = final_metrics(self.history)
                status, reason = "FINISHED", None
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (Ctrl-C); resume with: fedharness resume " + self.run_id
            raise
        except Exception as err:  # noqa: BLE001 - recorded by the listeners (MLflow: FAILED + reason), re-raised
            status, reason = "FAILED", f"{type(err).__name__}: {err}"
            if isinstance(err, RunFailed):
                err.run_id = self.run_id
            raise
        finally:
            if executor is not None:
                executor.shutdown()
            result.history = self.history
            result.global_vec = self.global_vec
            result.client_log = self.client_log.read() if self.client_log else None
            result.empty_rounds = [int(h["round"]) for h in self.history if h.get("clients_kept") == 0]
            for listener in self.listeners:
                listener.on_end(result, status, reason)
            if status == "FINISHED" and self.meta is not None:
                self.checkpoint.mark_finished(self.meta)  # after the listeners: MLflow says FINISHED first
                if not cfg.keep_checkpoint:
                    self.discard_checkpoint()  # nothing left to resume; MLflow holds the results
        return result

    def _one_round(self, rnd: int, executor, last: bool, stopping: bool) -> pd.DataFrame | None:
        t0 = time.perf_counter()
        out = train_round(rnd, algo=self.algo, clock=self.clock, store=self.store, data=self.data, k=self.k,
                          global_vec=self.global_vec, totals=self.totals, executor=executor,
                          nan_policy=self.cfg.nan_policy, cohort_size=self.cohort_size,
                          epochs=self.cfg.train.local_epochs, batch_size=self.cfg.train.batch_size)
        self.global_vec, self.totals = out.global_vec, out.totals
        metrics, clients = dict(out.metrics), None
        if self.evaluate and ((rnd + 1) % self.cfg.eval_every == 0 or last):
            t = time.perf_counter()
            eval_metrics, clients = evaluate_all(rnd, data=self.data, store=self.store, pending=out.new_states,
                                                 global_vec=self.global_vec, executor=executor, unseen=self.unseen,
                                                 clients=self.eval_ids)
            out.timings["evaluate"] = time.perf_counter() - t
            metrics |= eval_metrics
        metrics["wall_round_time"] = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append({"round": rnd + 1, **metrics})
        record = RoundRecord(rnd + 1, metrics, out.client_rows, out.timings)
        for listener in self.listeners:
            listener.on_round(record)
        if metrics["clients_kept"] == 0:
            self._no_update_survived(rnd, metrics)
        t = time.perf_counter()
        spent = {"checkpoint": 0.0}
        if self.store.checkpoint_due(rnd, self.cfg.checkpoint_every, last or stopping):
            self.store.commit(out.new_states, rnd, mark_done=lambda: spent.update(checkpoint=self._timed_write(rnd)))
        else:
            self.store.commit(out.new_states, rnd)
        spent["store_commit"] = time.perf_counter() - t - spent["checkpoint"]
        self._notify_checkpoint(rnd + 1, spent)
        return clients

    def _no_update_survived(self, rnd: int, m: dict[str, float]) -> None:
        """The global model cannot move in this round: fail the run (default) or say so and go on."""
        sampled, trained, bad, late, no_time = (int(m[k]) for k in ("clients_sampled", "clients_trained",
                                                "clients_nonfinite", "clients_late", "clients_dropped"))
        if not sampled:
            why = "no client was online to sample (budget.devices.availability)"
        elif trained and bad == trained:
            why = f"all {bad} trained clients' updates were NaN/inf: training diverged (lower train.lr, check the data)"
        else:
            why = (f"of {sampled} sampled, {bad} NaN/inf, {late} late for budget.deadline_s, {no_time} without time "
                   f"for budget.min_steps")
        if self.cfg.empty_round_policy == "fail":
            raise RunFailed(f"round {rnd + 1}: no client update survived; {why} (empty_round_policy=fail)")
        log.warning("round %d: no client update survived; %s; the global model is kept (empty_round_policy=skip)",
                    rnd + 1, why)

    def _timed_write(self, done_round: int) -> float:
        t = time.perf_counter()
        self._write_checkpoint(done_round)
        return time.perf_counter() - t

    def _notify_checkpoint(self, round: int, spent: dict[str, float]) -> None:
        for listener in self.listeners:
            listener.on_checkpoint(round, spent)

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
